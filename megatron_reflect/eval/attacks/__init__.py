"""Inference-stage attacks: each builds ``Case``s (a user prompt, maybe an assistant prefill);
``run_cases`` generates for them in batches under the reflection monitor and judges them.

Why one runner: every attack is "some text before the answer", so generation, monitoring and
both ASR countings are shared and comparable across attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_reflect.eval.generation import Generation, GenerationConfig, generate
from megatron_reflect.eval.judges import Sample
from megatron_reflect.eval.judges.refusal import RefusalJudge
from megatron_reflect.reflection import ReflectionTemplate


@dataclass(frozen=True)
class Case:
    id: str
    attack: str
    variant: str  # e.g. a template name or a prefill depth; "" when the attack has one form
    prompt: str   # the user turn as sent (attack text included)
    goal: str     # the underlying harmful request (what a judge checks the answer against)
    prefill: str = ""
    meta: dict = field(default_factory=dict)


def run_cases(model, tokenizer, cases: list[Case], template: ReflectionTemplate,
              gen_cfg: GenerationConfig) -> list[dict]:
    """Generate for every case and score it with the refusal rule, both countings.

    Returns one record per case: the case fields, the generation, ``success_blind`` and
    ``success_aware`` (attack success under reflection-blind / reflection-aware counting).
    """
    gens = generate(model, tokenizer, [c.prompt for c in cases], template, gen_cfg,
                    prefills=[c.prefill for c in cases])
    samples = [to_sample(c, g) for c, g in zip(cases, gens)]
    blind = RefusalJudge(reflection_aware=False).judge(samples)
    aware = RefusalJudge(reflection_aware=True).judge(samples)
    return [record(c, g, b.harmful, a.harmful) for c, g, b, a in zip(cases, gens, blind, aware)]


def to_sample(case: Case, gen: Generation) -> Sample:
    return Sample(prompt=case.goal, response=gen.visible, raw=gen.text,
                  refused_by_reflection=gen.refused_by_reflection)


def record(case: Case, gen: Generation, success_blind: bool, success_aware: bool) -> dict:
    return {"id": case.id, "attack": case.attack, "variant": case.variant, "goal": case.goal,
            "prompt": case.prompt, "prefill": case.prefill, "generated": gen.text, "visible": gen.visible,
            "reflections": [[r.verdict.value, r.category] for r in gen.reflections],
            "stopped_by_monitor": gen.stopped_by_monitor, "ended_with_eos": gen.ended_with_eos,
            "refused_by_reflection": gen.refused_by_reflection, "n_generated": len(gen.token_ids),
            "success_blind": success_blind, "success_aware": success_aware, **case.meta}


def asr(records: list[dict], key: str = "success_aware") -> float | None:
    vals = [bool(r[key]) for r in records if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None
