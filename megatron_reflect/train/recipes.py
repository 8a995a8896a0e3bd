"""Named runs: each recipe is a function returning a complete :class:`TrainConfig`.

A recipe fixes the model preset, batch and schedule that belong together; the dataset
(``data.blend``), run directory and layout are usually overridden from YAML or the
command line.  The vocabulary always comes from the dataset's tokenizer at run time.

* ``tiny-cpu``: 2-layer model, seq 128, a few hundred steps in minutes on a laptop CPU;
* ``smollm2-135m``: SmolLM2-135M, seq 2048, global batch 256 (0.5 M tokens);
* ``smollm2-1.7b``: SmolLM2-1.7B as SRP trained it from scratch on FineWeb-Edu: seq 2048,
  global batch 512 (1 M tokens), WSD with 2k warmup and a 20 % decay, bf16; FP8 and the
  parallel layout are set per cluster (see examples/pretrain_smollm2_1p7b_fineweb_edu.sh).
"""

from __future__ import annotations

from typing import Callable

from megatron_reflect.data.dataset import DataConfig
from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import get_preset
from megatron_reflect.model.provider import PrecisionConfig
from megatron_reflect.train.config import (
    CheckpointConfig,
    LoggingConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)


def tiny_cpu() -> TrainConfig:
    return TrainConfig(
        model=get_preset("tiny"),
        data=DataConfig(seq_length=128, split="90,10,0"),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, weight_decay=0.01, clip_grad=1.0),
        schedule=ScheduleConfig(train_steps=200, micro_batch_size=4, global_batch_size=8, warmup_steps=10,
                                lr_schedule="wsd", decay_fraction=0.2, eval_interval=50, eval_iters=2),
        checkpoint=CheckpointConfig(save_interval=100, keep_last=2),
        logging=LoggingConfig(log_interval=10, tensorboard=True),
        run_dir="runs/tiny-cpu",
    )


def smollm2_135m() -> TrainConfig:
    return TrainConfig(
        model=get_preset("smollm2-135m"),
        data=DataConfig(seq_length=2048, split="99,1,0", num_workers=2),
        optim=OptimConfig(lr=3e-3, min_lr=0.0, weight_decay=0.01, beta2=0.95, clip_grad=1.0),
        schedule=ScheduleConfig(train_steps=20000, micro_batch_size=8, global_batch_size=256, warmup_steps=2000,
                                lr_schedule="wsd", decay_fraction=0.2, eval_interval=1000, eval_iters=8),
        checkpoint=CheckpointConfig(save_interval=1000, keep_last=3),
        logging=LoggingConfig(log_interval=10),
        precision=PrecisionConfig(dtype="bf16"),
        run_dir="runs/smollm2-135m",
    )


def smollm2_1p7b() -> TrainConfig:
    return TrainConfig(
        model=get_preset("smollm2-1.7b"),
        data=DataConfig(seq_length=2048, split="99,1,0", num_workers=2),
        optim=OptimConfig(lr=5e-4, min_lr=0.0, weight_decay=0.1, beta2=0.95, clip_grad=1.0),
        schedule=ScheduleConfig(train_steps=50000, micro_batch_size=4, global_batch_size=512, warmup_steps=2000,
                                lr_schedule="wsd", decay_fraction=0.2, eval_interval=1000, eval_iters=8),
        checkpoint=CheckpointConfig(save_interval=1000, keep_last=3),
        logging=LoggingConfig(log_interval=10),
        precision=PrecisionConfig(dtype="bf16"),
        run_dir="runs/smollm2-1.7b",
    )


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "tiny-cpu": tiny_cpu,
    "smollm2-135m": smollm2_135m,
    "smollm2-1.7b": smollm2_1p7b,
}


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]()
