"""Safety classification by a reflection-trained model: its verdict after the template prefix.

Why: a model pretrained with safety reflections is also a safety classifier.  For a labelled
text we place the reflection prefix (`` <think>``) where the model would reflect (after the
user's prompt, or after the assistant's answer) and compare the probabilities of the verdict
words (Safe / Unsafe / Controversial, each the sum of its tokens' log-probabilities).
Score = P(Unsafe) + P(Controversial), renormalised over the three words; prediction = the
most probable verdict.  Cost: one teacher-forced forward per (text, verdict), batched.
The texts are a packaged set or the user's labelled file (``labelled_items``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from megatron_reflect.eval.data import LabelledText, labelled_texts
from megatron_reflect.eval.models import chat_prompt
from megatron_reflect.reflection import ReflectionTemplate, Verdict


@dataclass(frozen=True)
class Classified:
    id: str
    unsafe: bool
    p_safe: float
    p_unsafe: float
    p_controversial: float

    @property
    def score(self) -> float:
        return self.p_unsafe + self.p_controversial

    @property
    def predicted_unsafe(self) -> bool:
        return max(self.p_unsafe, self.p_controversial) > self.p_safe


def labelled_items(name_or_file: str, limit: int | None = None, seed: int | None = 0) -> list[LabelledText]:
    """A packaged labelled set by name, or the user's labelled file (JSONL/CSV, ``eval/user_files``)."""
    if name_or_file.lower().endswith((".jsonl", ".json", ".csv")):
        from megatron_reflect.eval.user_files import read_labelled_file

        return read_labelled_file(name_or_file, limit=limit)
    return labelled_texts(name_or_file, limit=limit, seed=seed)


def context_text(tokenizer, item: LabelledText, template: ReflectionTemplate) -> str:
    """The text before the verdict word: the chat turn(s) and the reflection prefix."""
    return chat_prompt(tokenizer, item.prompt, item.response) + template.prefix().rstrip()


def _verdict_ids(tokenizer, context: str, word: str) -> tuple[list[int], int]:
    """Token ids of context + " " + word, and where the word's tokens start.

    The word is tokenised together with its context so a merge across the boundary cannot
    differ from what the model was trained on.
    """
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    ctx = tokenizer(context, add_special_tokens=add_special).input_ids
    full = tokenizer(context + " " + word, add_special_tokens=add_special).input_ids
    common = 0
    while common < min(len(ctx), len(full)) and ctx[common] == full[common]:
        common += 1
    return full, common


@torch.no_grad()
def classify(model, tokenizer, items: list[LabelledText], template: ReflectionTemplate,
             batch_size: int = 8, progress: bool = False) -> list[Classified]:
    words = [Verdict.SAFE.value, Verdict.UNSAFE.value, Verdict.CONTROVERSIAL.value]
    rows: list[tuple[list[int], int]] = []
    for item in items:
        ctx = context_text(tokenizer, item, template)
        rows += [_verdict_ids(tokenizer, ctx, w) for w in words]
    logps = []
    pad = tokenizer.pad_token_id
    for start in tqdm(range(0, len(rows), batch_size), desc="classify", disable=not progress):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (seq, _) in enumerate(chunk):  # right padding: positions stay 0..n-1
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for i, (seq, first) in enumerate(chunk):  # only the verdict word's positions
            lp = torch.log_softmax(logits[i, first - 1:len(seq) - 1].float(), dim=-1)
            target = torch.tensor(seq[first:], device=lp.device)
            logps.append(lp.gather(1, target[:, None]).sum().item())
    out = []
    for k, item in enumerate(items):
        lp = logps[3 * k:3 * k + 3]
        top = max(lp)
        p = [math.exp(x - top) for x in lp]
        z = sum(p)
        out.append(Classified(item.id, item.unsafe, p[0] / z, p[1] / z, p[2] / z))
    return out


def metrics(results: list[Classified]) -> dict[str, float | int | None]:
    """Accuracy, F1 (Unsafe/Controversial = positive) and AUROC of the score."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = [int(r.unsafe) for r in results]
    pred = [int(r.predicted_unsafe) for r in results]
    auroc = roc_auc_score(y, [r.score for r in results]) if 0 < sum(y) < len(y) else None
    return {"n": len(results), "accuracy": sum(a == b for a, b in zip(y, pred)) / max(len(y), 1),
            "f1": float(f1_score(y, pred, zero_division=0)), "auroc": None if auroc is None else float(auroc),
            "predicted_unsafe_rate": sum(pred) / max(len(pred), 1)}
