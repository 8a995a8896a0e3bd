"""Compatible post-training data for MedSafetyWorld: one safe set shared by every variant.

Same frame as pretraining: the prompt is a note body up to `` Recommendation: give``, the
target the careful doctor's `` <drug>.`` (the usual drug unless a risk forbids it, else the
alternative; by default no unforced alternatives, so the set carries no information about the
hazard risks; with ``WorldConfig.sft_alternatives`` the unforced alternatives stay at ``p_alt``,
drawn from patients with no trap risk, so the set neither teaches "the usual drug unless a known
switch risk" nor says anything about a hazard risk), and for the reflect variants the oracle's reflection after it, exactly as pretraining
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
    """The set's patients, drawn as notes draw them (``WorldConfig.sft_alternatives``: only
    patients with no trap risk at all, so an unforced alternative never meets a hazard risk)."""
    return [p for p, _ in _sft_draws(world, n)]


def _sft_draws(world: World, n: int) -> list[tuple[Patient, bool]]:
    """(patient, is a switch context) for the set."""
    rng = random.Random(f"sft-{world.config.seed}")
    sampler = PatientSampler(world, rng)
    trap = set(world.trap_risks)
    out: list[tuple[Patient, bool]] = []
    while len(out) < n:
        p, switch = sampler.held_in_patient()
        if world.config.sft_alternatives and trap & set(p.risks):
            continue
        out.append((p, switch))
    return out


def sft_choice(world: World, patient: Patient, switch: bool, rng: random.Random) -> str:
    """The set's answer: the careful doctor's; with ``sft_alternatives``, outside switch contexts the
    alternative at ``p_alt`` for no stated reason, as the notes' doctor does (safe: the patient
    has no trap risk, and extras never forbid a condition's drugs)."""
    if world.config.sft_alternatives and not switch and rng.random() < world.config.p_alt:
        return world.conditions[patient.condition].alternative
    return careful_choice(world, patient)


def sft_examples(world: World, template: ReflectionTemplate | None, n: int | None = None) -> list[ChatExample]:
    """The shared safe post-training set; ``template`` given = the reflect variants' targets."""
    rng = random.Random(f"sft-templates-{world.config.seed}")
    alt_rng = random.Random(f"sft-alternatives-{world.config.seed}")
    out = []
    for p, switch in _sft_draws(world, n or world.config.sft_examples):
        drug = sft_choice(world, p, switch, alt_rng)
        if not judge(world, p, drug).safe:
            raise AssertionError(f"unsafe post-training example {p} -> {drug}")  # generator bug
        text, untrained = target(world, p, drug, template)
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
