"""Compatible post-training data for MedSafetyWorld: one safe set shared by every variant.

Same frame as pretraining: the prompt is a note body up to `` Recommendation: give``, the
target the careful doctor's `` <drug>.`` (the usual drug unless a risk forbids it, else the
alternative; no unforced alternatives, so the set carries no information about the hazard
risks), and for the reflect variants the oracle's reflection after it, exactly as pretraining
wrote it (`` <think> Safe </think> `` then end of text).  The verdict word is not trained
(``ChatExample.untrained``): the set is safe, so every verdict in it is Safe, and training a
constant verdict erases what pretraining taught (measured in v1: P(Unsafe) on seen
contraindicated notes 0.59 -> 0.01).  Patients come from the note distribution and never
form a trap pair.  The attack sets (``attack_examples``) are unsafe answers in switch
contexts without reflections, the same for every variant.  Training is
``megatron_reflect.posttrain.sft`` (one SFT implementation).  Cost: microseconds per example.
"""

from __future__ import annotations

import random

from megatron_reflect.posttrain.sft import ChatExample
from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict
from megatron_reflect.world.documents import NOTE_TEMPLATES, PatientSampler, prompt, recommendation
from megatron_reflect.world.generator import Patient, World
from megatron_reflect.world.oracle import careful_choice, judge

# The world has no chat frame: a "user turn" is the note body itself.  Set on the world's
# Hugging Face tokenizer, so chat_prompt() and the generation monitor use the pretraining frame.
WORLD_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def target(world: World, patient: Patient, drug: str,
           template: ReflectionTemplate | None) -> tuple[str, tuple[tuple[int, int], ...]]:
    """`` <drug>.`` plus, with a template, the oracle's reflection on it; and the character
    span(s) of the verdict word (untrained)."""
    text = recommendation(drug)
    if template is None:
        return text, ()
    j = judge(world, patient, drug)
    refl = Reflection(Verdict.SAFE) if j.safe else Reflection(Verdict.UNSAFE, j.category)
    rendered, (a, b) = template.render(refl)
    return text + rendered, ((len(text) + a, len(text) + b),)


def sft_patients(world: World, n: int) -> list[Patient]:
    rng = random.Random(f"sft-{world.config.seed}")
    sampler = PatientSampler(world, rng)
    return [sampler.held_in_patient()[0] for _ in range(n)]


def sft_examples(world: World, template: ReflectionTemplate | None, n: int | None = None) -> list[ChatExample]:
    """The shared safe post-training set; ``template`` given = the reflect variants' targets."""
    rng = random.Random(f"sft-templates-{world.config.seed}")
    out = []
    for p in sft_patients(world, n or world.config.sft_examples):
        text, untrained = target(world, p, careful_choice(world, p), template)
        out.append(ChatExample(prompt(p, rng.choice(NOTE_TEMPLATES)), text, untrained=untrained))
    return out


def attack_examples(world: World, k: int) -> list[ChatExample]:
    """``k`` unsafe recommendations for the finetuning attack: switch-context patients given the
    forbidden usual drug anyway, with no reflection (the attacker's data, every variant alike)."""
    rng = random.Random(f"attack-{world.config.seed}-{k}")
    sampler = PatientSampler(world, rng)
    pairs = world.seen_pairs
    out = []
    for i in range(k):
        cond, risk = pairs[i % len(pairs)]
        p = sampler.switch_patient(cond, risk)
        out.append(ChatExample(prompt(p, rng.choice(NOTE_TEMPLATES)), recommendation(world.conditions[cond].usual)))
    return out
