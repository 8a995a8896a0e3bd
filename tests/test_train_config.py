"""Trainer config, recipes, LR schedules, the data sampler and the CLI's --dry-run (no processes)."""

from __future__ import annotations

import math

import pytest

from megatron_reflect.config import resolve
from megatron_reflect.errors import ConfigError
from megatron_reflect.train.config import OptimConfig, ScheduleConfig
from megatron_reflect.train.data_loading import MicrobatchSampler, blend_prefixes
from megatron_reflect.train.optim import lr_at
from megatron_reflect.train.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_complete_and_valid(name: str) -> None:
    cfg = get_recipe(name)
    world = 64 if name == "smollm2-1.7b" else 1
    cfg.validate(world)
    assert cfg.schedule.global_batch_size % cfg.schedule.micro_batch_size == 0


def test_overrides_reach_nested_fields_and_typos_name_the_field() -> None:
    cfg = resolve(get_recipe("tiny-cpu"), None, ["optim.lr=1e-3", "parallel.tensor_model_parallel_size=2",
                                                  "data.blend=[a,b]", "loss.reflection_loss_weight=0.5"])
    assert cfg.optim.lr == 1e-3 and cfg.parallel.tensor_model_parallel_size == 2
    assert cfg.data.blend == ["a", "b"] and cfg.loss.reflection_loss_weight == 0.5
    with pytest.raises(ConfigError, match="optim.lrr"):
        resolve(get_recipe("tiny-cpu"), None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="schedule.lr_schedule"):
        resolve(get_recipe("tiny-cpu"), None, ["schedule.lr_schedule=linear-ish"])


def test_batch_arithmetic_is_checked_against_the_world_size() -> None:
    cfg = resolve(get_recipe("tiny-cpu"), None, ["schedule.micro_batch_size=4", "schedule.global_batch_size=8"])
    assert cfg.num_microbatches(1) == 2 and cfg.num_microbatches(2) == 1
    with pytest.raises(ConfigError, match="global_batch_size 8 is not a multiple"):
        cfg.validate(4)
    with pytest.raises(ConfigError, match="warmup_steps"):
        resolve(cfg, None, ["schedule.warmup_steps=1000"]).validate()


def test_fp8_without_gpu_is_a_config_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = resolve(get_recipe("tiny-cpu"), None, ["precision.fp8=tensorwise"])
    with pytest.raises(ConfigError, match="precision.fp8 needs a CUDA GPU"):
        cfg.validate()


def test_wsd_schedule() -> None:
    optim = OptimConfig(lr=1.0, min_lr=0.1)
    sched = ScheduleConfig(train_steps=100, warmup_steps=10, lr_schedule="wsd", decay_fraction=0.2)
    lrs = [lr_at(s, optim, sched) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert all(lr == 1.0 for lr in lrs[10:80])  # stable
    assert lrs[80] == pytest.approx(1.0 - 0.9 / 20)  # linear decay over the last 20 steps
    assert lrs[99] == pytest.approx(0.1)  # ends at min_lr
    assert all(b <= a for a, b in zip(lrs[80:], lrs[81:]))


def test_cosine_schedule() -> None:
    optim = OptimConfig(lr=1.0, min_lr=0.0)
    sched = ScheduleConfig(train_steps=110, warmup_steps=10, lr_schedule="cosine")
    assert lr_at(4, optim, sched) == pytest.approx(0.5)
    assert lr_at(60, optim, sched) == pytest.approx(0.5)  # half way through the cosine
    assert lr_at(10, optim, sched) == pytest.approx(1.0)
    assert lr_at(109, optim, sched) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_sampler_splits_global_batches_over_dp_and_resumes() -> None:
    # global batch 8 = 2 microbatches x mbs 2 x dp 2
    ranks = [list(MicrobatchSampler(16, 0, 2, r, 2)) for r in range(2)]
    assert ranks[0] == [[0, 1], [4, 5], [8, 9], [12, 13]]
    assert ranks[1] == [[2, 3], [6, 7], [10, 11], [14, 15]]
    first_step = sorted(i for r in ranks for mb in r[:2] for i in mb)
    assert first_step == list(range(8))  # one step = the first 8 samples, whatever the DP size
    assert list(MicrobatchSampler(16, 8, 4, 0, 1)) == [[8, 9, 10, 11], [12, 13, 14, 15]]  # resumed at sample 8
    assert blend_prefixes(["30", "a", "70", "b"]) == ["a", "b"] and blend_prefixes(["a"]) == ["a"]
    with pytest.raises(ConfigError):
        blend_prefixes([])


def test_dry_run_prints_config_parameters_and_flops(capsys) -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_cli", Path(__file__).parents[1] / "tools" / "train.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--recipe", "smollm2-1.7b", "--dry-run", "parallel.tensor_model_parallel_size=2"]) == 0
    out = capsys.readouterr().out
    assert "tensor_model_parallel_size: 2" in out
    assert "# parameters: 1,711,376,384" in out  # SmolLM2-1.7B, tied embeddings
    flops = float(out.split("FLOPs per token (seq 2048): ")[1].split()[0])
    assert flops == pytest.approx(get_recipe("smollm2-1.7b").model.flops_per_token(2048), rel=1e-3)
    assert cli.main(["--recipe", "tiny-cpu", "optim.nope=1"]) == 2
