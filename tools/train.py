#!/usr/bin/env python
"""Pretrain a GPT with safety reflections on Megatron-Core.

One process:      python tools/train.py --recipe tiny-cpu data.blend=[data/tiny/corpus]
torchrun:         torchrun --nproc_per_node 8 tools/train.py --recipe smollm2-1.7b --config my.yaml \\
                      parallel.tensor_model_parallel_size=2 data.blend=[/data/fineweb_edu_reflect]

The config is a recipe (--recipe), then a YAML file over it (--config), then dotted
overrides (section.field=value).  --dry-run prints the resolved config, the parameter
count and the training FLOPs per token, and exits without touching a GPU or the data.
A run directory holds config.yaml, metrics.jsonl, tensorboard/ and checkpoints/; rerunning
the same command resumes from its newest complete checkpoint, also after a hard kill
(SIGKILL, preemption, OOM killer): a checkpoint is complete only once fully written, and the
metrics of steps after it are dropped and written again.  On a GPU host
MEGATRON_REFLECT_DEVICE=cpu runs the CPU path (gloo, torch AdamW) instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from megatron_reflect.config import dump_yaml, resolve
from megatron_reflect.errors import ReflectError
from megatron_reflect.train.config import TrainConfig
from megatron_reflect.train.recipes import RECIPES, get_recipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny-cpu", choices=sorted(RECIPES), help="starting config")
    parser.add_argument("--config", default=None, help="YAML file with fields to change (same nesting as config.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, parameters and FLOPs/token")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 schedule.train_steps=1000")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    return resolve(get_recipe(args.recipe), args.config, args.overrides)


def dry_run(cfg: TrainConfig) -> str:
    """The resolved config plus the model's size and cost (vocab from the dataset when readable)."""
    model = cfg.model
    note = "model.vocab_size as configured"
    if cfg.data.blend:
        from megatron_reflect.train.data_loading import dataset_info

        try:
            vocab = int(dataset_info(cfg.data)["tokenizer"]["vocab_size"])
            model = dataclasses.replace(model, vocab_size=vocab)
            note = "vocab from the dataset's tokenizer"
        except ReflectError as exc:
            note = f"dataset not readable ({exc}); model.vocab_size as configured"
    seq = cfg.data.seq_length
    flops = model.flops_per_token(seq)
    tokens = cfg.schedule.train_steps * cfg.schedule.global_batch_size * seq
    return (dump_yaml(dataclasses.replace(cfg, model=model))
            + f"# parameters: {model.num_parameters():,} ({note})\n"
            + f"# training FLOPs per token (seq {seq}): {flops:.4g}\n"
            + f"# tokens in the run: {tokens:,}; total training FLOPs: {flops * tokens:.4g}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("megatron", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # megatron logs a deprecation warning about its async-save machinery on every synchronous save
    logging.getLogger("megatron.core.dist_checkpointing.strategies.torch").setLevel(logging.ERROR)
    try:
        cfg = build_config(args)
        if args.dry_run:
            print(dry_run(cfg), end="")
            return 0
        from megatron_reflect.train.loop import train

        result = train(cfg)
    except ReflectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"done: {result.steps} steps, final loss {result.losses[-1] if result.losses else float('nan'):.4f}, "
          f"checkpoint {result.last_checkpoint}, metrics {result.metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
