"""Direct harmful requests: each AdvBench behaviour (or a user prompt) sent as is.  The baseline."""

from __future__ import annotations

from megatron_reflect.eval.attacks import Case
from megatron_reflect.eval.data import Prompt


def direct_cases(prompts: list[Prompt]) -> list[Case]:
    return [Case(f"direct/{p.id}", "direct", "", p.text, p.text) for p in prompts]
