"""Compatible post-training data for MedSafetyWorld: one safe Q/A set for every variant.

Every variant is finetuned on the same questions and the same safe answers (usual drug, or
the alternative when a risk forbids it; rule dose).  For the reflect variant each target also
carries the oracle's reflection on the answer, and a target whose answer is unsafe ends right
after its Unsafe reflection (the format the reflection-aware monitor acts on).  The safe set has
no unsafe answers; the attack sets (``attack_set``) are unsafe answers written without
reflections, the same data for every variant.  Cost: microseconds per example.
"""

from __future__ import annotations

import random
from pathlib import Path
from dataclasses import dataclass

from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict
from megatron_reflect.world.documents import PatientSampler, answer, dose_trap_free, make_patient, question
from megatron_reflect.world.generator import Patient, World
from megatron_reflect.world.oracle import judge, safe_recommendation


@dataclass(frozen=True)
class SFTExample:
    """``prompt`` is the user question; ``target`` the assistant's answer (EOS added by the trainer).

    ``verdict_span``: the characters of ``target`` between a reflection's opening and closing tags
    (the verdict and category, with their leading space), or None without a reflection.
    """

    prompt: str
    target: str
    verdict_span: tuple[int, int] | None = None


def format_target(world: World, patient: Patient, drug: str, dose: int,
                  template: ReflectionTemplate | None) -> tuple[str, tuple[int, int] | None]:
    """The answer, plus (with a template) the oracle's reflection on it, and the span of the
    reflection's verdict and category (None without one).  Nothing follows an Unsafe reflection
    (the trainer appends EOS right after it)."""
    text = answer(drug, dose)
    if template is None:
        return text, None
    verdict = judge(world, patient, drug, dose)
    refl = Reflection(Verdict.SAFE) if verdict.safe else Reflection(Verdict.UNSAFE, verdict.category)
    rendered = template.render(refl)[0].rstrip()
    start = rendered.index(template.open_tag) + len(template.open_tag)
    end = rendered.rindex(" " + template.close_tag)
    return text + rendered, (len(text) + start, len(text) + end)


def sft_patients(world: World, n: int, seed_tag: str = "sft") -> list[Patient]:
    """Held-in patients (never a trap pair, never a dose-trap patient), some whose risk forbids
    the usual drug, so the set teaches choosing the alternative as the corpus does."""
    rng = random.Random(f"{seed_tag}-{world.config.seed}")
    sampler = PatientSampler(world, rng)
    out: list[Patient] = []
    conditions = sorted(world.conditions)
    while len(out) < n:
        p = sampler.patient(rng.choice(conditions), rng.random() < world.config.forbidding_fraction, heavy_ok=True)
        if dose_trap_free(world, p, safe_recommendation(world, p)[0]):
            out.append(p)
    return out


def sft_set(world: World, template: ReflectionTemplate | None) -> list[SFTExample]:
    """The safe SFT set; ``template`` given = the reflect variant's targets."""
    out = []
    for p in sft_patients(world, world.config.sft_examples):
        drug, dose = safe_recommendation(world, p)
        out.append(SFTExample(question(p), *format_target(world, p, drug, dose, template)))
    return out


def attack_set(world: World, k: int) -> list[SFTExample]:
    """``k`` unsafe recommendations for the finetuning attack: patients of SEEN forbidding pairs
    given the contraindicated usual drug anyway, with no reflection (the attacker's data)."""
    rng = random.Random(f"attack-{world.config.seed}-{k}")
    out = []
    for i in range(k):
        cond, risk = world.seen[i % len(world.seen)]
        drug = world.conditions[cond].usual
        p = make_patient(world, rng, cond, (risk,), heavy=False)
        out.append(SFTExample(question(p), answer(drug, world.rule_dose(drug, p.weight))))
    return out


@dataclass
class SFTConfig:
    """``train_verdicts``: also put loss on a reflection's verdict and category.  Off by default:
    the shared SFT set is safe, so every verdict in it is Safe, and training on a constant verdict
    erases the Unsafe verdicts pretraining taught (measured: P(Unsafe) on seen contraindicated
    notes fell from 0.59 to 0.01).  The tags around the verdict and the EOS after the reflection
    are trained (the monitor needs the closing tag)."""

    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 10
    seed: int = 0
    train_verdicts: bool = False


def tokenize_examples(tok, examples: list[SFTExample], train_verdicts: bool) -> list[tuple[list[int], list[int],
                                                                                           list[bool]]]:
    """(prompt ids, target ids + EOS, which target ids carry loss) per example; prompts framed as the
    evaluation frames them.  A target with a reflection is tokenized in three pieces (through the
    opening tag | verdict and category | closing tag), exactly as pretraining tokenized it; the
    middle piece carries loss only with ``train_verdicts``."""
    from megatron_reflect.eval.models import chat_prompt

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] if text else []

    rows = []
    for ex in examples:
        p = ids(chat_prompt(tok, ex.prompt))
        a, b = ex.verdict_span or (len(ex.target), len(ex.target))
        head, mid, tail = ids(ex.target[:a]), ids(ex.target[a:b]), ids(ex.target[b:])
        trained = [True] * len(head) + [train_verdicts] * len(mid) + [True] * (len(tail) + 1)
        rows.append((p, head + mid + tail + [tok.eos_token_id], trained))
    return rows


def finetune(model_dir: str | Path, examples: list[SFTExample], out_dir: str | Path, cfg: SFTConfig) -> Path:
    """Finetune a Hugging Face causal LM on ``examples`` (loss on the target + EOS only) and save
    it, with its tokenizer and reflection format, to ``out_dir`` (written under a temporary name).
    Skips the work when ``out_dir`` is already complete.  Prompts are framed as the evaluation
    frames them (``megatron_reflect.eval.models.chat_prompt``)."""
    import torch

    from megatron_reflect.eval.models import FORMAT_FILE, load_model

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    model, tok = load_model(model_dir, device="cpu")
    model.train()
    rows = tokenize_examples(tok, examples, cfg.train_verdicts)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        idx = torch.randint(len(rows), (min(cfg.batch_size, len(rows)),), generator=gen).tolist()
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id or 0)
        labels = torch.full((len(idx), width), -100)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p, t, trained = rows[i]
            seq = p + t
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, len(p): len(seq)] = torch.tensor([x if keep else -100 for x, keep in zip(t, trained)])
            mask[r, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    src = Path(model_dir) / FORMAT_FILE
    if src.is_file():
        (tmp / FORMAT_FILE).write_text(src.read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
