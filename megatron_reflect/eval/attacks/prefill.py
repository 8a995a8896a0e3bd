"""Prefilling: the assistant turn starts with the first k tokens of a harmful answer.

Why: shallow safety alignment lives in the first few answer tokens; a model that reflects on
its own output should still flag the answer after k tokens of it (SRP's claim).  Harmful
answers come from pyrit's many-shot pairs (or a user file's ``response`` field); depths are
token counts in the evaluated model's tokenizer.
"""

from __future__ import annotations

from megatron_reflect.eval.attacks import Case
from megatron_reflect.eval.data import Prompt, QAPair


def prefill_cases(pairs: list[QAPair], depths: list[int], tokenizer) -> list[Case]:
    cases = []
    for pair in pairs:
        ids = tokenizer(pair.assistant, add_special_tokens=False).input_ids
        for k in depths:
            if k > len(ids):
                continue
            prefix = tokenizer.decode(ids[:k])
            cases.append(Case(f"prefill/{k}/{pair.id}", "prefill", f"k={k}", pair.user, pair.user, prefix,
                              {"depth": k}))
    return cases


def pairs_from_prompts(prompts: list[Prompt]) -> list[QAPair]:
    """User prompts that carry a ``response`` field (a harmful answer to prefill from)."""
    return [QAPair(p.id, p.text, str(p.meta["response"]), True) for p in prompts if p.meta.get("response")]
