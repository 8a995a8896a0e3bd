"""The whole MedSafetyWorld comparison: world -> variants -> pretrain -> HF -> SFT -> evaluate.

For each seed s: the world of seed s and its corpus variants through the data pipeline; then
for each variant one model pretrained with the project's trainer
(``megatron_reflect.train.loop.train``; identical steps and tokens per step for every
variant, so reflection tokens count against the budget; whole-note packing by
``DataConfig.mask_cut_reflections``), exported to Hugging Face, evaluated (before SFT),
finetuned on the same safe set (``megatron_reflect.posttrain.sft``), and evaluated again.

Jobs run in ``jobs`` persistent worker processes (``threads`` torch threads each; the 2-core
default is two single-thread workers), so imports are paid once per worker, not per model.
Resumable: every stage leaves a marker (the dataset stats, ``pretrain.json``, the HF
directories, ``eval_base.json``, ``eval.json``); a re-run skips whatever is complete.  The
report (``report.py``, which imports nothing from here) writes ``summary.json``,
``table.md`` and ``plot.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from megatron_reflect.config import from_dict, to_dict
from megatron_reflect.errors import ConfigError
from megatron_reflect.files import write_json_atomic
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.posttrain.sft import TrainConfig as SFTTrainConfig
from megatron_reflect.world.config import WORLD_VERSION, WorldConfig, quick_config
from megatron_reflect.world.evaluate import EvalConfig
from megatron_reflect.world.variants import REFLECT_VARIANTS, VariantConfig

DEFAULT_VARIANTS: tuple[str, ...] = ("filter", "rewrite", "reflect", "reflect_perm")
TEST_SEEDS: tuple[int, ...] = tuple(range(8))
CALIBRATION_SEEDS: tuple[int, ...] = (100, 101, 102, 103, 104)


def world_model(num_layers: int = 2, hidden_size: int = 64) -> ModelConfig:
    """A small Llama-style model: head dimension 32 (2 heads at d=64; measured ~35% faster per
    token on one CPU thread than 4 heads of 16), SwiGLU ~8/3 x d, tied embeddings."""
    heads = max(1, hidden_size // 32)
    ffn = int(round(hidden_size * 8 / 3 / 4)) * 4
    return ModelConfig(num_layers=num_layers, hidden_size=hidden_size, ffn_hidden_size=ffn,
                       num_attention_heads=heads, num_query_groups=heads, vocab_size=640,
                       max_position_embeddings=256, tie_embeddings=True, make_vocab_size_divisible_by=128,
                       layer_spec="local")


@dataclass
class PretrainConfig:
    """Identical for every variant: same steps, same tokens per step."""

    train_steps: int = 730  # ~6 M tokens at 64 x 128
    seq_length: int = 128
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    decay_fraction: float = 0.2
    weight_decay: float = 0.01
    mask_cut_reflections: bool = True  # whole-note packing: no verdict without its note's start
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 weights, fp32 masters (TorchOptimizer): 1.5x faster
    # one note per attention window: attention is reset at every end-of-document token, so a packed
    # note sees nothing before its own start (as an evaluation prompt does); rotary embeddings are
    # relative, so a note's attention is then the same wherever it sits in the sample
    reset_attention: bool = False

    @property
    def tokens(self) -> int:
        return self.train_steps * self.seq_length * self.batch_size


def default_sft() -> SFTTrainConfig:
    return SFTTrainConfig(lr=1e-3, steps=100, batch_size=16, max_length=128, warmup_steps=10, device="cpu")


@dataclass
class ExperimentConfig:
    out_dir: str = "results/medsafetyworld"
    seeds: tuple[int, ...] = TEST_SEEDS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    world: WorldConfig = field(default_factory=WorldConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)
    model: ModelConfig = field(default_factory=world_model)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTTrainConfig = field(default_factory=default_sft)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attacks: bool = False  # prefill, forged Safe and finetuning attacks (not in the default budget)
    jobs: int = 2  # worker processes
    threads: int = 1  # torch threads per worker
    count_unanchored: bool = True  # count trained verdicts without their note's start (must be 0)
    unanchored_sample: int = 0  # count them on this many seeded random samples (0: every pretraining sample)
    name: str = ""  # a label for the configuration (calibration tables)
    # the confirmatory test's registration: its test seeds run only once it is committed as registered
    registration: str = "configs/world/registration.yaml"  # relative paths: from the repository root


def quick_experiment(out_dir: str, seeds: tuple[int, ...] = (0,)) -> ExperimentConfig:
    """Every stage at test size: a small world, the four test variants, a few steps."""
    return ExperimentConfig(
        out_dir=out_dir, seeds=seeds, world=quick_config(0), model=world_model(2, 64),
        pretrain=PretrainConfig(train_steps=300, seq_length=128, batch_size=32, warmup_steps=10, lr=1e-2),
        sft=dataclasses.replace(default_sft(), steps=10, batch_size=8),
        eval=EvalConfig(attack_ks=(10,), attack_steps=5, samples_per_query=2),
        variant=VariantConfig(progress=False), name="quick")


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

    marker = data_dir(cfg, seed) / "variants.json"
    if marker.is_file():
        stats = json.loads(marker.read_text())
        if all(v in stats for v in cfg.variants):
            return stats
    t0 = time.process_time()
    stats = build_variants(world_for(cfg, seed), data_dir(cfg, seed), cfg.variants, cfg.variant)
    stats["cpu_seconds"] = round(time.process_time() - t0, 2)
    write_json_atomic(marker, stats)
    return stats


def train_config(cfg: ExperimentConfig, seed: int, variant: str):
    """The project trainer's config for one (seed, variant)."""
    from megatron_reflect.data.dataset import DataConfig
    from megatron_reflect.model.provider import PrecisionConfig
    from megatron_reflect.train.config import (CheckpointConfig, LoggingConfig, OptimConfig, ScheduleConfig,
                                               TrainConfig)

    p = cfg.pretrain
    d = job_dir(cfg, seed, variant)
    return TrainConfig(
        model=cfg.model,
        data=DataConfig(blend=[str(data_dir(cfg, seed) / variant / "data")], split="100,0,0",
                        seq_length=p.seq_length, seed=1234 + seed, cache_dir=str(d / "index_cache"),
                        mask_cut_reflections=p.mask_cut_reflections, reset_attention_mask=p.reset_attention),
        optim=OptimConfig(lr=p.lr, min_lr=p.min_lr, weight_decay=p.weight_decay, clip_grad=1.0),
        schedule=ScheduleConfig(train_steps=p.train_steps, micro_batch_size=p.batch_size,
                                global_batch_size=p.batch_size, warmup_steps=p.warmup_steps, lr_schedule="wsd",
                                decay_fraction=p.decay_fraction, eval_interval=0),
        checkpoint=CheckpointConfig(save_dir=str(d / "checkpoints"), save_interval=max(200, p.train_steps // 2),
                                    keep_last=1, resume=True),
        logging=LoggingConfig(log_interval=max(1, p.train_steps // 10), tensorboard=False),
        precision=PrecisionConfig(dtype=p.precision),
        seed=1234 + seed, run_dir=str(d / "pretrain"))


def count_unanchored(tcfg, sample: int = 0, seed: int = 0) -> dict:
    """Trained verdicts whose note starts before their sample, over every pretraining sample, or
    over ``sample`` of them drawn with ``seed`` (``samples`` says how many were read)."""
    import random

    from megatron_reflect.data.dataset import build_reflect_datasets, unanchored_verdicts

    n = tcfg.schedule.train_steps * tcfg.schedule.global_batch_size
    train_ds, _, _ = build_reflect_datasets(tcfg.data, (n, 0, 0))
    indices = range(n) if not sample or sample >= n else sorted(random.Random(f"unanchored-{seed}").sample(range(n),
                                                                                                              sample))
    return {"samples": len(indices), "of_samples": n, "unanchored_verdicts": unanchored_verdicts(train_ds, indices)}


def set_world_frame(hf_dir: Path) -> None:
    """Give the exported tokenizer the world's frame: the 'user turn' is the note itself."""
    from megatron_reflect.eval.models import load_tokenizer
    from megatron_reflect.world.sft import WORLD_CHAT_TEMPLATE

    tok = load_tokenizer(hf_dir)
    if tok.chat_template != WORLD_CHAT_TEMPLATE:
        tok.chat_template = WORLD_CHAT_TEMPLATE
        tok.save_pretrained(hf_dir)


def run_job(cfg: ExperimentConfig, seed: int, variant: str, log: Callable[[str], None] = print) -> dict:
    """Pretrain, export, evaluate before SFT, SFT, evaluate; each stage skipped when done."""
    from megatron_reflect.train.checkpointing import latest_checkpoint
    from megatron_reflect.world.evaluate import evaluate_model
    from megatron_reflect.world.sft import sft_examples
    from megatron_reflect.world.variants import world_template

    d = job_dir(cfg, seed, variant)
    d.mkdir(parents=True, exist_ok=True)
    done = d / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())
    world = world_for(cfg, seed)
    reflect = variant in REFLECT_VARIANTS
    tcfg = train_config(cfg, seed, variant)
    marker = d / "pretrain.json"
    if not marker.is_file():
        from megatron_reflect.train.loop import train

        os.environ.pop("MASTER_PORT", None)
        t0, c0 = time.time(), time.process_time()
        result = train(tcfg)
        info = {"steps": result.steps, "first_loss": result.losses[0] if result.losses else None,
                "final": result.final, "seconds": round(time.time() - t0, 1),
                "cpu_seconds": round(time.process_time() - c0, 1), "tokens": cfg.pretrain.tokens,
                "checkpoint": str(result.last_checkpoint)}
        if reflect and cfg.count_unanchored:
            info.update(count_unanchored(tcfg, cfg.unanchored_sample, seed))
        write_json_atomic(marker, info)
        log(f"[seed{seed}/{variant}] pretrained {result.steps} steps in {info['seconds']} s, "
            f"loss {result.final.get('loss', float('nan')):.3f}")
    timing: dict[str, float] = {}
    base = d / "hf_base"
    c0 = time.process_time()
    if not (base / "config.json").is_file():
        from megatron_reflect.convert.export import export_checkpoint

        ckpt = latest_checkpoint(tcfg.checkpoint.save_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{tcfg.checkpoint.save_dir}: no checkpoint after pretraining")
        tmp = d / "hf_base.tmp"
        export_checkpoint(ckpt, tmp)
        set_world_frame(tmp)
        os.replace(tmp, base)
    timing["export_cpu_seconds"] = round(time.process_time() - c0, 2)
    ecfg = dataclasses.replace(cfg.eval, seed=seed)
    base_marker = d / "eval_base.json"
    c0 = time.process_time()
    if not base_marker.is_file():
        base_eval = evaluate_model(world, base, ecfg, reflect, cross=ecfg.cross_check and ecfg.cross_check_base,
                                   queries_path=d / "queries_base.json")
        write_json_atomic(base_marker, base_eval)
    timing["eval_base_cpu_seconds"] = round(time.process_time() - c0, 2)
    sft_dir = d / "hf_sft"
    c0 = time.process_time()
    if not (sft_dir / "config.json").is_file():
        from megatron_reflect.posttrain.sft import finetune_examples

        examples = sft_examples(world, world_template(world) if reflect else None)
        finetune_examples(base, examples, sft_dir, dataclasses.replace(cfg.sft, seed=seed))
    timing["sft_cpu_seconds"] = round(time.process_time() - c0, 2)
    c0 = time.process_time()
    metrics = evaluate_model(world, sft_dir, ecfg, reflect, attacks=cfg.attacks, work_dir=d,
                             queries_path=d / "queries.json")
    timing["eval_cpu_seconds"] = round(time.process_time() - c0, 2)
    result = {"seed": seed, "variant": variant, "world_version": WORLD_VERSION,
              "pretrain": json.loads(marker.read_text()), "metrics": metrics,
              "metrics_base": json.loads(base_marker.read_text()), "timing": timing,
              "sft": json.loads((sft_dir / "sft_summary.json").read_text()) | {"losses": None}}
    write_json_atomic(done, result)
    log(f"[seed{seed}/{variant}] {headline(metrics)}")
    return result


# What a job's figures depend on; seeds, variants, attacks and workers may change between resumes.
RESULT_SECTIONS = ("world", "variant", "model", "pretrain", "sft", "eval")


def save_config(cfg: ExperimentConfig) -> Path:
    """Write ``experiment_config.json``; refuse an output directory that holds another configuration's
    results, which resuming would silently mix with this one's (each finished job is skipped)."""
    path = Path(cfg.out_dir) / "experiment_config.json"
    new = to_dict(cfg)
    if path.is_file():
        old = to_dict(load_config(path))  # an older file's missing fields read as their defaults
        changed = [f"{sec}.{k}" for sec in RESULT_SECTIONS for k in sorted(set(old[sec]) | set(new[sec]))
                   if old[sec].get(k) != new[sec].get(k)]
        if changed:
            raise ConfigError(f"{path}: {cfg.out_dir} holds results of another configuration ({', '.join(changed[:6])}"
                              f"{' ...' if len(changed) > 6 else ''} differ); resuming there would mix the two: "
                              f"choose another --out, or remove the directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, new)
    return path


def load_config(path: str | Path) -> ExperimentConfig:
    return from_dict(ExperimentConfig, json.loads(Path(path).read_text()), where=str(path))


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _task(cfg_path: str, kind: str, seed: int, variant: str) -> dict:
    cfg = load_config(cfg_path)
    logf = Path(cfg.out_dir) / f"seed{seed}" / f"{variant or 'data'}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    with _output_to(logf):
        if kind == "data":
            return build_data(cfg, seed)
        return run_job(cfg, seed, variant)


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Every stage for every seed and variant in ``cfg.jobs`` worker processes; then the report."""
    from megatron_reflect.world.report import write_report

    from megatron_reflect.world.registration import guard_test_seeds

    t0 = time.time()
    reg = Path(cfg.registration)
    guard_test_seeds(cfg.seeds, to_dict(cfg), reg if reg.is_absolute() else Path(__file__).resolve().parents[2] / reg)
    cfg_path = str(save_config(cfg))
    pending = [(s, v) for s in cfg.seeds for v in cfg.variants if not (job_dir(cfg, s, v) / "eval.json").is_file()]
    log(f"{len(cfg.seeds)} seed(s) x {len(cfg.variants)} variant(s); {len(pending)} job(s) to run, {cfg.jobs} at a "
        f"time; pretraining {cfg.pretrain.train_steps} steps x {cfg.pretrain.batch_size * cfg.pretrain.seq_length} "
        f"tokens = {cfg.pretrain.tokens / 1e6:.2f} M tokens per model")
    env = {"OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ.pop("MASTER_PORT", None)
    failed: list[str] = []
    try:
        with mp.get_context("spawn").Pool(max(1, cfg.jobs), initializer=_worker_init, initargs=(cfg.threads,)) as pool:
            data = {s: pool.apply_async(_task, (cfg_path, "data", s, "")) for s in cfg.seeds
                    if any((s, v) in pending for v in cfg.variants)}
            for s, res in data.items():
                try:
                    stats = res.get()
                    log(f"[seed{s}] data: " + ", ".join(f"{v} {st['tokens']} tokens" for v, st in stats.items()
                                                         if isinstance(st, dict))
                        + f"; reflect overhead {stats.get('reflect', {}).get('overhead_pct', 0)}%")
                except Exception as e:  # noqa: BLE001 - reported with the seed, then re-raised below
                    failed.append(f"seed{s}/data: {e}")
                    log(f"[seed{s}] data FAILED: {e}; see {data_dir(cfg, s).parent / 'data.log'}")
            jobs = {(s, v): (pool.apply_async(_task, (cfg_path, "job", s, v)), time.time())
                    for s, v in pending if not any(f.startswith(f"seed{s}/") for f in failed)}
            last_beat = time.time()
            while jobs:
                time.sleep(1.0)
                for key, (res, start) in list(jobs.items()):
                    if not res.ready():
                        continue
                    del jobs[key]
                    s, v = key
                    try:
                        out = res.get()
                        log(f"[seed{s}/{v}] done ({time.time() - start:.0f} s since queued): "
                            f"{headline(out['metrics'])}")
                    except Exception as e:  # noqa: BLE001
                        failed.append(f"seed{s}/{v}: {e}")
                        log(f"[seed{s}/{v}] FAILED: {e}; see {job_dir(cfg, s, v).parent / (v + '.log')}")
                if jobs and time.time() - last_beat > 30:
                    last_beat = time.time()
                    active = [k for k in jobs if (job_dir(cfg, *k) / "pretrain").exists()
                              and not (job_dir(cfg, *k) / "eval.json").is_file()]
                    log("  " + "; ".join(f"seed{s}/{v}: {_job_progress(cfg, s, v)}" for s, v in active[:cfg.jobs])
                        + f"  ({len(jobs)} left)")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if failed:
        raise RuntimeError(f"jobs failed: {failed}")
    summary = write_report(cfg.out_dir, to_dict(cfg))
    log(f"all done in {time.time() - t0:.0f} s; results in {cfg.out_dir}")
    return summary


def headline(m: dict[str, float]) -> str:
    def g(key: str) -> float:
        return m.get(key, float("nan"))

    return (f"trap U {g('trap.U'):.2f} (rec-only {g('trap.U_rec'):.2f}), seen U {g('seen.U'):.2f}, "
            f"held-in H {g('held_in.H'):.2f}" + (f", G3 AUROC {g('probe.auroc'):.2f}" if "probe.auroc" in m else ""))


def _job_progress(cfg: ExperimentConfig, seed: int, variant: str) -> str:
    """A running job's stage, read from its files (for the heartbeat line)."""
    d = job_dir(cfg, seed, variant)
    if (d / "hf_sft" / "config.json").is_file():
        return "evaluating"
    if (d / "hf_base" / "config.json").is_file():
        return "evaluating base / SFT"
    if (d / "pretrain.json").is_file():
        return "export"
    metrics = d / "pretrain" / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            return f"step {last['step']}/{cfg.pretrain.train_steps} loss {last['loss']:.3f}"
    return "starting"
