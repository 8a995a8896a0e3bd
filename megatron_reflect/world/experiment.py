"""The whole MedSafetyWorld comparison: world -> variants -> pretrain -> SFT -> HF -> evaluate.

For each seed s: the world of seed s, its corpus variants through the data pipeline, then for
each variant one model pretrained with the project's trainer (``megatron_reflect.train.loop.train``;
identical steps and tokens per step for every variant, so reflection tokens count against the
budget), exported to Hugging Face (``megatron_reflect.convert.export.export_checkpoint``),
finetuned on the same safe Q/A set (reflect: targets with reflections), and evaluated exactly
(``megatron_reflect.world.evaluate``).  Jobs (seed, variant) run as separate single-thread
processes, ``jobs`` at a time (the 2-core default: two).

Resumable: every stage leaves a marker (the dataset stats, the checkpoint, the HF directory,
``eval.json``); a re-run skips whatever is complete.  Results go to ``out_dir``: per job
``seed<s>/<variant>/eval.json``, and ``summary.json``, ``table.md``, ``plot.png`` (report.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from megatron_reflect.config import from_dict, to_dict
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.world.config import WORLD_VERSION, WorldConfig, quick_config
from megatron_reflect.world.evaluate import EvalConfig
from megatron_reflect.world.sft import SFTConfig
from megatron_reflect.world.variants import VariantConfig

DEFAULT_VARIANTS: tuple[str, ...] = ("raw", "filter", "rewrite", "reflect")


def world_model() -> ModelConfig:
    """The pilot's size: 4 layers, d=128 (~0.9 M parameters with the world's 768-token vocabulary)."""
    return ModelConfig(num_layers=4, hidden_size=128, ffn_hidden_size=344, num_attention_heads=4,
                       num_query_groups=4, vocab_size=768, max_position_embeddings=256, tie_embeddings=True,
                       make_vocab_size_divisible_by=128, layer_spec="local")


@dataclass
class PretrainConfig:
    """Identical for every variant: same steps, same tokens per step."""

    train_steps: int = 360
    seq_length: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30

    @property
    def tokens(self) -> int:
        return self.train_steps * self.seq_length * self.batch_size


@dataclass
class ExperimentConfig:
    out_dir: str = "results/medsafetyworld"
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    world: WorldConfig = field(default_factory=WorldConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)
    model: ModelConfig = field(default_factory=world_model)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=120, batch_size=16, lr=1e-3))
    eval: EvalConfig = field(default_factory=EvalConfig)
    jobs: int = 2  # parallel single-thread job processes
    quick: bool = False


def quick_experiment(out_dir: str) -> ExperimentConfig:
    """Every stage at test size: a small world, all four variants, one seed, a few steps."""
    return ExperimentConfig(out_dir=out_dir, seeds=(0,), world=quick_config(0),
                            model=dataclasses.replace(world_model(), num_layers=2, hidden_size=64,
                                                      ffn_hidden_size=172),
                            pretrain=PretrainConfig(train_steps=30, seq_length=128, batch_size=16, warmup_steps=5),
                            sft=SFTConfig(steps=10, batch_size=8), eval=EvalConfig(attack_ks=(10,), attack_steps=5),
                            variant=VariantConfig(progress=False), quick=True)


def job_dir(cfg: ExperimentConfig, seed: int, variant: str) -> Path:
    return Path(cfg.out_dir) / f"seed{seed}" / variant


def data_dir(cfg: ExperimentConfig, seed: int) -> Path:
    return Path(cfg.out_dir) / f"seed{seed}" / "data"


def world_for(cfg: ExperimentConfig, seed: int):
    from megatron_reflect.world.generator import generate_world

    return generate_world(dataclasses.replace(cfg.world, seed=seed))


def build_data(cfg: ExperimentConfig, seed: int) -> dict:
    """Stage 1: the world of ``seed`` and its variant datasets (resumable)."""
    from megatron_reflect.world.variants import build_variants

    world = world_for(cfg, seed)
    stats = build_variants(world, data_dir(cfg, seed), cfg.variants, cfg.variant)
    (data_dir(cfg, seed) / "variants.json").write_text(json.dumps(stats, indent=1))
    return stats


def _train_config(cfg: ExperimentConfig, seed: int, variant: str):
    from megatron_reflect.data.dataset import DataConfig
    from megatron_reflect.train.config import (CheckpointConfig, LoggingConfig, OptimConfig, ScheduleConfig,
                                               TrainConfig)

    p = cfg.pretrain
    d = job_dir(cfg, seed, variant)
    return TrainConfig(
        model=cfg.model,
        data=DataConfig(blend=[str(data_dir(cfg, seed) / variant / "data")], split="100,0,0",
                        seq_length=p.seq_length, seed=1234 + seed, cache_dir=str(d / "index_cache")),
        optim=OptimConfig(lr=p.lr, min_lr=p.min_lr, weight_decay=0.01, clip_grad=1.0),
        schedule=ScheduleConfig(train_steps=p.train_steps, micro_batch_size=p.batch_size,
                                global_batch_size=p.batch_size, warmup_steps=p.warmup_steps, lr_schedule="wsd",
                                decay_fraction=0.2, eval_interval=0),
        checkpoint=CheckpointConfig(save_dir=str(d / "checkpoints"), save_interval=max(100, p.train_steps // 3),
                                    keep_last=1, resume=True),
        logging=LoggingConfig(log_interval=max(1, p.train_steps // 10), tensorboard=False),
        seed=1234 + seed, run_dir=str(d / "pretrain"))


def run_job(cfg: ExperimentConfig, seed: int, variant: str, log: Callable[[str], None] = print) -> dict:
    """Stages 2-5 for one (seed, variant): pretrain, export, SFT, evaluate; each skipped when done."""
    from megatron_reflect.train.checkpointing import latest_checkpoint
    from megatron_reflect.world.evaluate import evaluate_model
    from megatron_reflect.world.sft import finetune, sft_set
    from megatron_reflect.world.variants import world_template

    d = job_dir(cfg, seed, variant)
    d.mkdir(parents=True, exist_ok=True)
    done = d / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())
    world = world_for(cfg, seed)
    tcfg = _train_config(cfg, seed, variant)
    marker = d / "pretrain.json"
    if not marker.is_file():
        from megatron_reflect.train.loop import train

        os.environ.pop("MASTER_PORT", None)
        t0 = time.time()
        result = train(tcfg)
        info = {"steps": result.steps, "first_loss": result.losses[0] if result.losses else None,
                "final": result.final, "seconds": round(time.time() - t0, 1),
                "tokens": cfg.pretrain.tokens, "checkpoint": str(result.last_checkpoint)}
        marker.write_text(json.dumps(info, indent=1))
        log(f"[seed{seed}/{variant}] pretrained {result.steps} steps in {info['seconds']} s, "
            f"loss {result.final.get('loss', float('nan')):.3f}")
    base = d / "hf_base"
    if not (base / "config.json").is_file():
        from megatron_reflect.convert.export import export_checkpoint

        ckpt = latest_checkpoint(tcfg.checkpoint.save_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{tcfg.checkpoint.save_dir}: no checkpoint after pretraining")
        export_checkpoint(ckpt, base)
    sft_dir = d / "hf_sft"
    template = world_template(world) if variant == "reflect" else None
    t0 = time.time()
    finetune(base, sft_set(world, template), sft_dir, dataclasses.replace(cfg.sft, seed=seed))
    corpus_texts = {json.loads(line)["text"] for line in open(data_dir(cfg, seed) / "corpus.jsonl", encoding="utf-8")}
    metrics = evaluate_model(world, sft_dir, dataclasses.replace(cfg.eval, seed=seed), corpus_texts,
                             reflect=variant == "reflect", work_dir=d)
    pre = json.loads(marker.read_text())
    result = {"seed": seed, "variant": variant, "world_version": WORLD_VERSION, "pretrain": pre,
              "metrics": metrics, "sft_eval_seconds": round(time.time() - t0, 1)}
    tmp = done.with_name("eval.json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, done)
    log(f"[seed{seed}/{variant}] evaluated in {result['sft_eval_seconds']} s: {_headline(metrics)}")
    return result


def save_config(cfg: ExperimentConfig) -> Path:
    path = Path(cfg.out_dir) / "experiment_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(cfg), indent=1))
    return path


def load_config(path: str | Path) -> ExperimentConfig:
    return from_dict(ExperimentConfig, json.loads(Path(path).read_text()), where=str(path))


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Every stage for every seed and variant, ``cfg.jobs`` job processes at a time; then the report."""
    from megatron_reflect.world.report import write_report

    t0 = time.time()
    cfg_path = save_config(cfg)
    for seed in cfg.seeds:
        stats = build_data(cfg, seed)
        log(f"[seed{seed}] data: " + ", ".join(f"{v} {s['tokens']} tokens" for v, s in stats.items())
            + f"; reflect overhead {stats.get('reflect', {}).get('overhead_pct', 0)}%")
    pending = [(s, v) for s in cfg.seeds for v in cfg.variants if not (job_dir(cfg, s, v) / "eval.json").is_file()]
    log(f"{len(pending)} job(s) to run, {cfg.jobs} at a time; pretraining {cfg.pretrain.train_steps} steps x "
        f"{cfg.pretrain.batch_size * cfg.pretrain.seq_length} tokens per model")
    running: list[tuple[tuple[int, str], subprocess.Popen, float]] = []
    failed: list[str] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    env.pop("MASTER_PORT", None)
    last_beat = time.time()
    while pending or running:
        if time.time() - last_beat > 30:
            last_beat = time.time()
            log("  " + "; ".join(f"seed{s}/{v}: {_job_progress(cfg, s, v)}" for (s, v), _, _ in running))
        while pending and len(running) < max(1, cfg.jobs):
            seed, variant = pending.pop(0)
            logf = open(job_dir(cfg, seed, variant).parent / f"{variant}.log", "w")
            cmd = [sys.executable, "-m", "megatron_reflect.world.experiment", str(cfg_path), str(seed), variant]
            running.append(((seed, variant), subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT),
                            time.time()))
            log(f"[seed{seed}/{variant}] started")
        time.sleep(1.0)
        for item in list(running):
            (seed, variant), proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                failed.append(f"seed{seed}/{variant}")
                log(f"[seed{seed}/{variant}] FAILED (exit {proc.returncode}); see "
                    f"{job_dir(cfg, seed, variant).parent / (variant + '.log')}")
            else:
                res = json.loads((job_dir(cfg, seed, variant) / "eval.json").read_text())
                log(f"[seed{seed}/{variant}] done in {time.time() - start:.0f} s: {_headline(res['metrics'])}")
    if failed:
        raise RuntimeError(f"jobs failed: {failed}")
    summary = write_report(cfg)
    log(f"all done in {time.time() - t0:.0f} s; results in {cfg.out_dir}")
    return summary


def _headline(m: dict[str, float]) -> str:
    def g(key: str) -> float:
        return m.get(key, float("nan"))

    return (f"unsafe on seen pairs {g('seen.unsafe_action'):.2f}, helpful {g('held_in.helpful'):.2f}, "
            f"L1 trap unsafe {g('level1.unsafe_action'):.2f}, dose trap {g('dose.unsafe_action'):.2f}")


def _job_progress(cfg: ExperimentConfig, seed: int, variant: str) -> str:
    """A running job's stage, read from its files (for the heartbeat line)."""
    d = job_dir(cfg, seed, variant)
    if (d / "hf_sft" / "config.json").is_file():
        return "evaluating"
    if (d / "pretrain.json").is_file():
        return "export + SFT"
    metrics = d / "pretrain" / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            return f"step {last['step']}/{cfg.pretrain.train_steps} loss {last['loss']:.3f}"
    return "starting"


def _job_main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    cfg = load_config(argv[0])
    run_job(cfg, int(argv[1]), argv[2])


if __name__ == "__main__":
    _job_main(sys.argv[1:])
