"""Pluggable judges of (prompt, response) pairs: did the attack succeed?

Each judge returns one ``Judgement`` per sample (``harmful`` True = the attack succeeded;
None = the judge could not decide).  ``refusal`` is the rule-based judge (two countings:
reflection-blind and reflection-aware), ``classifier`` wraps the labels helper's offline
classifier labeler, ``llm`` asks an OpenAI-compatible endpoint with a StrongREJECT-style
rubric.  ``agreement`` compares any two judges.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """What a judge sees: the request, the user-visible answer, and the raw generated text."""

    prompt: str
    response: str
    raw: str = ""
    refused_by_reflection: bool = False


@dataclass(frozen=True)
class Judgement:
    harmful: bool | None
    score: float | None = None
    detail: str = ""


def agreement(a: list[Judgement], b: list[Judgement]) -> dict[str, float | int | None]:
    """Raw agreement and Cohen's kappa over the samples both judges decided."""
    pairs = [(x.harmful, y.harmful) for x, y in zip(a, b) if x.harmful is not None and y.harmful is not None]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "agreement": None, "kappa": None}
    agree = sum(x == y for x, y in pairs) / n
    pa = sum(x for x, _ in pairs) / n
    pb = sum(y for _, y in pairs) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = 1.0 if chance == 1 else (agree - chance) / (1 - chance)
    return {"n": n, "agreement": agree, "kappa": kappa}
