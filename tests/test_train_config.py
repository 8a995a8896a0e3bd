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
    # FP8-compatible dimensions (the tiny preset's ffn 172 is not), so the device is what fails
    cfg = resolve(get_recipe("tiny-cpu"), None, ["precision.fp8=tensorwise", "model.ffn_hidden_size=192"])
    with pytest.raises(ConfigError, match="precision.fp8 needs a CUDA GPU"):
        cfg.validate()


def test_fp8_settings_that_megatron_or_te_reject_fail_in_validate_on_any_machine() -> None:
    """What TransformerConfig or TE's FP8 GEMMs would raise after launch is a ConfigError in validate()."""
    from megatron_reflect.model.presets import get_preset
    from megatron_reflect.model.provider import PrecisionConfig, check_precision
    from megatron_reflect.runtime import ParallelConfig

    fp8_ok = ["model.ffn_hidden_size=192"]
    cfg = resolve(get_recipe("tiny-cpu"), None, [*fp8_ok, "precision.fp8=delayed", "precision.fp8_first_last_bf16=true"])
    with pytest.raises(ConfigError, match=r"precision.fp8=delayed cannot keep the first/last layers in BF16"):
        cfg.validate()
    # the tiny preset: ffn_hidden_size 172 (and 2 x 172 = 344) is no multiple of 16
    cfg = resolve(get_recipe("tiny-cpu"), None, ["precision.fp8=tensorwise"])
    with pytest.raises(ConfigError, match=r"linear_fc1 output 2 x model.ffn_hidden_size / TP1 = 344; "
                                          r"linear_fc2 input model.ffn_hidden_size / TP1 = 172"):
        cfg.validate()
    # fine at TP=1 (ffn 208 = 13 x 16), not once split over TP=2 (104)
    fp8_208 = ["precision.fp8=tensorwise", "model.ffn_hidden_size=208"]
    check_precision(resolve(get_recipe("tiny-cpu"), None, fp8_208).model, ParallelConfig(),
                    PrecisionConfig(fp8="tensorwise"))
    cfg = resolve(get_recipe("tiny-cpu"), None, [*fp8_208, "parallel.tensor_model_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"linear_fc2 input model.ffn_hidden_size / TP2 = 104;"):
        cfg.validate(2)
    # tokens per microbatch: 1 x 60 is no multiple of 8
    cfg = resolve(get_recipe("tiny-cpu"), None, [*fp8_ok, "precision.fp8=tensorwise", "data.seq_length=60",
                                                  "schedule.micro_batch_size=1", "schedule.global_batch_size=8"])
    with pytest.raises(ConfigError, match=r"micro_batch_size x data.seq_length = 60\) divisible by 8"):
        cfg.validate()
    # the GPU presets pass at the layouts they are run with
    for name, tps in (("smollm2-1.7b", (1, 2, 4, 8)), ("llama-1.7b-gqa", (1, 2, 8)), ("smollm2-135m", (1, 3))):
        for tp in tps:
            check_precision(get_preset(name), ParallelConfig(tensor_model_parallel_size=tp),
                            PrecisionConfig(dtype="bf16", fp8="tensorwise"), tokens_per_microbatch=4 * 2048)


def test_bad_intervals_name_the_field() -> None:
    with pytest.raises(ConfigError, match="logging.log_interval 0 must be >= 1"):
        resolve(get_recipe("tiny-cpu"), None, ["logging.log_interval=0"]).validate()
    with pytest.raises(ConfigError, match="checkpoint.save_interval -1"):
        resolve(get_recipe("tiny-cpu"), None, ["checkpoint.save_interval=-1"]).validate()
    with pytest.raises(ConfigError, match="num_query_groups 2 is not divisible by parallel.tensor_model_parallel_size 4"):
        resolve(get_recipe("tiny-cpu"), None, ["parallel.tensor_model_parallel_size=4",
                                                "schedule.global_batch_size=4"]).validate(4)


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


def test_resuming_the_other_paths_optimizer_state_is_a_clear_error(tmp_path) -> None:
    """A CPU (torch AdamW) checkpoint resumed by the GPU trainer, or back, or dp_reshardable at a new TP."""
    from megatron_reflect.train.checkpointing import MEGATRON_DISTRIBUTED, TORCH_ADAMW, _check_resumable

    cpu = {"format": TORCH_ADAMW, "sharding": "model_space"}
    gpu = {"format": MEGATRON_DISTRIBUTED, "sharding": "dp_reshardable"}
    with pytest.raises(ConfigError, match=r"written by the CPU trainer \(torch AdamW\) and cannot be resumed by the "
                                          r"GPU trainer .*checkpoint.load=.*step_1 checkpoint.resume=false"):
        _check_resumable(tmp_path / "step_1", cpu, gpu, layout_changed=False)
    with pytest.raises(ConfigError, match=r"written by the GPU trainer .* cannot be resumed by the CPU trainer"):
        _check_resumable(tmp_path / "step_1", gpu, cpu, layout_changed=False)
    with pytest.raises(ConfigError, match=r"saved dp_reshardable, which resumes only at the TP/PP layout"):
        _check_resumable(tmp_path / "step_1", gpu, gpu, layout_changed=True)
    _check_resumable(tmp_path / "step_1", gpu, gpu, layout_changed=False)  # same layout: fine (any DP size)
    _check_resumable(tmp_path / "step_1", cpu, cpu, layout_changed=True)  # CPU moments reshard like weights
    _check_resumable(tmp_path / "step_1", None, gpu, layout_changed=True)  # weights-only: fresh moments
