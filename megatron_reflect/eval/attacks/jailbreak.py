"""Jailbreak templates: pyrit's role-play / persona prompts with the harmful request in their slot."""

from __future__ import annotations

from megatron_reflect.eval.attacks import Case
from megatron_reflect.eval.data import JailbreakTemplate, Prompt


def jailbreak_cases(prompts: list[Prompt], templates: list[JailbreakTemplate]) -> list[Case]:
    """Every (template, prompt) pair; cost grows as len(templates) * len(prompts)."""
    return [Case(f"jailbreak/{t.name}/{p.id}", "jailbreak", t.name, t.fill(p.text), p.text)
            for t in templates for p in prompts]
