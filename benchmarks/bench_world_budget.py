"""Sizing `make demo`: the project trainer's step time on the MedSafetyWorld model, raw vs reflect.

Builds the default world's raw and reflect datasets (through the pipeline), runs the world
model (4 layers, d=128) for ``--steps`` steps of 32 x 128 tokens on each with the real trainer,
one thread, and prints seconds per step, tokens/s, the reflect/raw step-time ratio (identical
budgets: it should be ~1.0) and the projected pretraining wall time of the default demo
(4 variants x 3 seeds x 360 steps, two single-thread jobs at a time).

    python benchmarks/bench_world_budget.py --steps 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def _time_variant(cfg, variant: str, steps: int) -> float:
    """Seconds per step over the last ``steps // 2`` steps (warm), from the trainer's own log."""
    from megatron_reflect.world.experiment import _train_config
    from megatron_reflect.train.loop import train

    tcfg = _train_config(cfg, 0, variant)
    tcfg = dataclasses.replace(tcfg, checkpoint=dataclasses.replace(tcfg.checkpoint, save_at_end=False,
                                                                    save_interval=0),
                               logging=dataclasses.replace(tcfg.logging, log_interval=max(1, steps // 2)))
    train(tcfg)
    last = json.loads((Path(tcfg.run_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    return cfg.pretrain.batch_size * cfg.pretrain.seq_length / last["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from megatron_reflect.world.experiment import ExperimentConfig, build_data

    with tempfile.TemporaryDirectory() as tmp:
        base = ExperimentConfig(out_dir=tmp, seeds=(0,), variants=("raw", "reflect"))
        cfg = dataclasses.replace(base, pretrain=dataclasses.replace(base.pretrain, train_steps=args.steps,
                                                                     warmup_steps=2))
        t0 = time.time()
        build_data(cfg, 0)
        data_s = time.time() - t0
        raw = _time_variant(cfg, "raw", args.steps)
        refl = _time_variant(cfg, "reflect", args.steps)
    demo = ExperimentConfig()
    tokens = demo.pretrain.batch_size * demo.pretrain.seq_length
    jobs = len(demo.variants) * len(demo.seeds)
    projected = jobs / demo.jobs * demo.pretrain.train_steps * (raw + refl) / 2
    print(f"data (world + 2 variants): {data_s:.1f} s")
    print(f"raw:     {raw:.3f} s/step, {tokens / raw:,.0f} tokens/s (one thread)")
    print(f"reflect: {refl:.3f} s/step, {tokens / refl:,.0f} tokens/s")
    print(f"ratio reflect/raw step time: {refl / raw:.3f}")
    print(f"projected demo pretraining: {jobs} models x {demo.pretrain.train_steps} steps, {demo.jobs} at a time "
          f"= {projected / 60:.1f} min (plus ~1-2 min per model for start-up, export, SFT and evaluation)")


if __name__ == "__main__":
    main()
