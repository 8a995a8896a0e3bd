"""The evaluation driver: a config lists the evaluations; this runs them and writes the report.

Why a library function: ``tools/evaluate.py`` is a thin CLI over ``run_evaluation``, and tests
call it in-process.  Config (YAML) fields are dataclasses below; unknown fields are errors
naming the field.  Cost: what the listed evaluations cost (generation dominates).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_reflect.errors import ConfigError
from megatron_reflect.eval import data
from megatron_reflect.eval.attacks import Case, run_cases
from megatron_reflect.eval.attacks.direct import direct_cases
from megatron_reflect.eval.attacks.forged import forged_cases
from megatron_reflect.eval.attacks.gcg import GCGAttackConfig, gcg_cases, optimise_suffixes
from megatron_reflect.eval.attacks.jailbreak import jailbreak_cases
from megatron_reflect.eval.attacks.prefill import pairs_from_prompts, prefill_cases
from megatron_reflect.eval.classification import classify, labelled_items, metrics
from megatron_reflect.eval.finetune_attack import FinetuneAttackConfig, run_finetune_attacks
from megatron_reflect.eval.generation import GenerationConfig
from megatron_reflect.eval.judges import Judgement, Sample, agreement
from megatron_reflect.eval.judges.llm import LLMJudgeConfig
from megatron_reflect.eval.report import attack_summary, write_report
from megatron_reflect.reflection import ReflectionTemplate

ATTACKS = ("direct", "jailbreak", "prefill", "forged", "gcg")
JUDGES = ("refusal", "classifier", "llm")


@dataclass
class Evaluation:
    """One entry of ``evaluations``: ``type`` plus its options."""

    type: str
    n_prompts: int | None = None  # override of the global n_prompts
    set: str = "prompts"  # classification: many_shot_responses | prompts | prompts_boolq | a .jsonl/.csv file
    limit: int = 32  # classification: texts
    n_templates: int = 2  # jailbreak
    depths: list[int] = field(default_factory=lambda: [5, 20, 50])  # prefill
    affirmative: bool = True  # forged
    gcg: dict = field(default_factory=dict)  # GCGAttackConfig fields
    finetune: dict = field(default_factory=dict)  # FinetuneAttackConfig fields


@dataclass
class EvalConfig:
    model: str = "smollm2"  # a HF directory, or "smollm2" for the packaged SmolLM2-135M-Instruct
    out_dir: str = "runs/eval"
    device: str = "auto"
    prompts: str | None = None  # user prompt file (JSONL/CSV with 'prompt'); replaces the packaged prompts
    n_prompts: int = 8
    seed: int = 0
    generation: dict = field(default_factory=dict)  # GenerationConfig fields
    judges: list[str] = field(default_factory=lambda: ["refusal"])
    llm_judge: dict = field(default_factory=dict)  # LLMJudgeConfig fields
    classifier_judge: dict = field(default_factory=dict)  # options for build_labeler("classifier")
    evaluations: list[dict] = field(default_factory=list)


def build(cls, raw: Any, where: str):
    """A dataclass from a mapping, with errors that name the offending field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**raw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def load_config(path: str | Path, overrides: dict | None = None) -> EvalConfig:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = build(EvalConfig, raw, str(path))
    for i, ev in enumerate(cfg.evaluations):
        e = build(Evaluation, ev, f"{path}: evaluations[{i}]")
        if e.type not in ATTACKS + ("classification", "finetune"):
            raise ConfigError(f"{path}: evaluations[{i}].type {e.type!r} is not one of "
                              f"{list(ATTACKS) + ['classification', 'finetune']}")
    bad = [j for j in cfg.judges if j not in JUDGES]
    if bad:
        raise ConfigError(f"{path}: judges {bad} unknown; expected some of {list(JUDGES)}")
    return cfg


def _prompts(cfg: EvalConfig, ev: Evaluation) -> list[data.Prompt]:
    n = ev.n_prompts or cfg.n_prompts
    if cfg.prompts:
        return data.read_prompt_file(cfg.prompts, limit=n)
    return data.advbench(limit=n, seed=cfg.seed)


def attack_cases(name: str, ev: Evaluation, cfg: EvalConfig, model, tok, template: ReflectionTemplate,
                 cache: dict) -> list[Case]:
    prompts = _prompts(cfg, ev)
    if name == "direct":
        return direct_cases(prompts)
    if name == "jailbreak":
        return jailbreak_cases(prompts, data.jailbreak_templates(limit=ev.n_templates, seed=cfg.seed))
    if name == "prefill":
        pairs = pairs_from_prompts(prompts) if cfg.prompts else \
            data.many_shot_pairs(harmful=True, limit=ev.n_prompts or cfg.n_prompts, seed=cfg.seed)
        if not pairs:
            raise ConfigError(f"prefill: {cfg.prompts} has no 'response' field to prefill from")
        return prefill_cases(pairs, ev.depths, tok)
    if name == "forged":
        return forged_cases(prompts, template, ev.affirmative)
    if name == "gcg":
        gcfg = build(GCGAttackConfig, ev.gcg, "evaluations[gcg].gcg")
        if "gcg" not in cache:  # optimised once against the original model, reused after finetuning
            cache["gcg"] = optimise_suffixes(model, tok, prompts, gcfg)
        return gcg_cases(prompts, cache["gcg"])
    raise ConfigError(f"unknown attack {name!r}")


def make_judges(cfg: EvalConfig) -> dict[str, object]:
    from megatron_reflect.eval.judges.classifier import ClassifierJudge
    from megatron_reflect.eval.judges.llm import LLMJudge

    judges: dict[str, object] = {}
    if "classifier" in cfg.judges:
        judges["classifier"] = ClassifierJudge(**cfg.classifier_judge)
    if "llm" in cfg.judges:
        judges["llm"] = LLMJudge(build(LLMJudgeConfig, cfg.llm_judge, "llm_judge"))
    return judges


def apply_judges(records: list[dict], judges: dict[str, object]) -> None:
    """Add ``judge_<name>`` (attack success per that judge) to each record, in place."""
    samples = [Sample(r["goal"], r["visible"], r["generated"], r["refused_by_reflection"]) for r in records]
    for name, judge in judges.items():
        for r, j in zip(records, judge.judge(samples)):
            r[f"judge_{name}"] = j.harmful
            r[f"judge_{name}_detail"] = j.detail


def judge_agreement(records: list[dict], names: list[str]) -> dict[str, dict]:
    keys = ["success_blind", "success_aware"] + [f"judge_{n}" for n in names]
    cols = {k: [Judgement(r.get(k)) for r in records] for k in keys}
    return {f"{a} vs {b}": agreement(cols[a], cols[b]) for i, a in enumerate(keys) for b in keys[i + 1:]}


def run_evaluation(cfg: EvalConfig, model=None, tokenizer=None) -> dict:
    """Run every listed evaluation; write samples.jsonl, summary.json, summary.md and plots to out_dir."""
    from megatron_reflect.eval.models import load_model, load_template
    from megatron_reflect.packaged import smollm2_hf_dir

    started = time.time()
    model_dir = smollm2_hf_dir() if cfg.model == "smollm2" else Path(cfg.model)
    if model is None:
        model, tokenizer = load_model(model_dir, device=cfg.device)
    template = load_template(model_dir)
    gen_cfg = build(GenerationConfig, cfg.generation, "generation")
    judges = make_judges(cfg)
    evals = [build(Evaluation, ev, f"evaluations[{i}]") for i, ev in enumerate(cfg.evaluations)]
    records: list[dict] = []
    summary: dict = {"model": str(model_dir), "template": dataclasses.asdict(template), "classification": {},
                     "finetune": [], "notes": []}
    cache: dict = {}

    base_attacks = [e for e in evals if e.type in ATTACKS]
    records += _tag(run_many(model, tokenizer, base_attacks, cfg, template, gen_cfg, cache), "base")
    for ev in evals:
        if ev.type == "classification":
            items = labelled_items(ev.set, limit=ev.limit, seed=cfg.seed)  # a packaged set or the user's file
            res = classify(model, tokenizer, items, template, batch_size=gen_cfg.batch_size)
            summary["classification"][ev.set] = metrics(res)
            records += [{"attack": "classification", "variant": ev.set, "model_tag": "base", **vars(r),
                         "score": r.score} for r in res]
        elif ev.type == "finetune":
            fcfg = build(FinetuneAttackConfig, ev.finetune, "evaluations[finetune].finetune")
            if fcfg.device == "auto":
                fcfg.device = cfg.device
            # attacks after finetuning: those listed in ``then`` with their options from the config
            then = [e for e in evals if e.type in fcfg.then] or [Evaluation(t) for t in fcfg.then]
            rows = run_finetune_attacks(
                model, tokenizer, template, fcfg,
                lambda m, tag: _tag(run_many(m, tokenizer, then, cfg, template, gen_cfg, cache), tag))
            for row in rows:
                records += row["records"]
                if row["tag"] != "before":
                    summary["finetune"].append({
                        "tag": row["tag"], "loss_before": row["loss_before"], "loss_after": row["loss_after"],
                        **_asr_pair(row["records"])})
            summary["finetune"].insert(0, {"tag": "before", **_asr_pair(rows[0]["records"])})
    attack_records = [r for r in records if r["attack"] in ATTACKS]
    apply_judges(attack_records, judges)
    summary["attacks"] = attack_summary(attack_records, [f"judge_{n}" for n in judges])
    summary["judge_agreement"] = judge_agreement(attack_records, list(judges)) if attack_records else {}
    if "classifier" not in cfg.judges:
        summary["notes"].append("classifier judge not requested")
    summary["seconds"] = time.time() - started
    summary["files"] = {k: str(v) for k, v in write_report(cfg.out_dir, records, summary).items()}
    return summary


def run_many(model, tok, evals: list[Evaluation], cfg: EvalConfig, template, gen_cfg, cache) -> list[dict]:
    out = []
    for ev in evals:
        out += run_cases(model, tok, attack_cases(ev.type, ev, cfg, model, tok, template, cache), template, gen_cfg)
    return out


def _tag(records: list[dict], tag: str) -> list[dict]:
    for r in records:
        r["model_tag"] = tag
    return records


def _asr_pair(records: list[dict]) -> dict:
    n = len(records)
    return {"n": n, "asr_blind": sum(r["success_blind"] for r in records) / n if n else None,
            "asr_aware": sum(r["success_aware"] for r in records) / n if n else None}
