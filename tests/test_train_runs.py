"""Whole training runs in this process (``train(cfg)`` called repeatedly, as the world demo does).

On a real dataset from the pipeline (oracle-labelled records -> reflections -> SentencePiece
tokens; tests/train_corpus.py):

* the loss goes down, reflections are learnt faster than text, validation follows, and
  metrics.jsonl holds every logged step;
* a run stopped at step 3 (``schedule.exit_interval``) and resumed from its checkpoint
  continues with exactly the losses of an uninterrupted run (weights, AdamW moments, data
  position and LR schedule all restored), and only ``keep_last`` checkpoints remain;
* TensorBoard events are written and tools/plot_metrics.py draws the curves.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from train_corpus import make_dataset

from megatron_reflect.config import resolve
from megatron_reflect.train.checkpointing import list_checkpoints
from megatron_reflect.train.loop import train
from megatron_reflect.train.recipes import get_recipe


def _load_plot_metrics():
    path = Path(__file__).parents[1] / "tools" / "plot_metrics.py"
    spec = importlib.util.spec_from_file_location("plot_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plot_metrics = _load_plot_metrics()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("train_runs") / "data")


def _cfg(prefix: str, run_dir: Path, *overrides: str):
    return resolve(get_recipe("tiny-cpu"), None, [
        f"run_dir={run_dir}", f"data.blend=[{prefix}]", "data.seq_length=64", "schedule.micro_batch_size=4",
        "schedule.global_batch_size=8", "logging.log_interval=1", "logging.tensorboard=false", *overrides])


def test_loss_goes_down_on_pipeline_data(prefix: str, tmp_path: Path) -> None:
    cfg = _cfg(prefix, tmp_path / "run", "schedule.train_steps=40", "schedule.warmup_steps=5",
               "schedule.eval_interval=20", "schedule.eval_iters=2", "checkpoint.save_interval=0",
               "checkpoint.save_at_end=false", "logging.tensorboard=true")
    result = train(cfg)
    losses = result.losses
    assert len(losses) == 40 and result.steps == 40
    # from near-uniform over the 384-token vocabulary to well below it
    assert losses[0] == pytest.approx(math.log(384), abs=0.2)
    assert sum(losses[-5:]) / 5 < losses[0] - 2.0, losses
    # reflections (a small closed vocabulary of tags and verdicts) are learnt faster than text
    assert result.final["reflection_loss"] < result.final["text_loss"] - 0.5, result.final
    assert result.valid[1]["loss"] < result.valid[0]["loss"] < losses[0]
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 41))
    assert [r["loss"] for r in train_records] == pytest.approx(losses)
    for key in ("text_loss", "reflection_loss", "verdict_acc_safe", "verdict_acc_unsafe", "tokens_per_s", "lr"):
        assert key in train_records[-1]
    assert train_records[-1]["lr"] == pytest.approx(cfg.optim.min_lr)  # WSD decayed to min_lr at the end
    assert result.model_config is not None and result.model_config.vocab_size == 384  # from the dataset
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    png = plot_metrics.plot([tmp_path / "run"], tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_stopped_and_resumed_run_matches_uninterrupted(prefix: str, tmp_path: Path) -> None:
    common = ("schedule.train_steps=6", "schedule.warmup_steps=2", "schedule.eval_interval=0")
    straight = train(_cfg(prefix, tmp_path / "straight", *common, "checkpoint.save_interval=1",
                          "checkpoint.keep_last=2"))
    assert [p.name for p in list_checkpoints(tmp_path / "straight" / "checkpoints")] == [
        "step_00000005", "step_00000006"]

    first = train(_cfg(prefix, tmp_path / "stopped", *common, "schedule.exit_interval=3"))
    assert first.steps == 3 and first.last_checkpoint is not None
    meta = json.loads((first.last_checkpoint / "meta.json").read_text())
    assert meta["step"] == 3 and meta["consumed_samples"] == 24
    assert meta["tokenizer"]["vocab_size"] == 384 and meta["reflection_template"]["open_tag"] == "<think>"

    second = train(_cfg(prefix, tmp_path / "stopped", *common))
    assert second.steps == 6
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=1e-6, rel=0)
    # the resumed half is not a replay of the first half: the data position moved on
    assert second.losses[0] != pytest.approx(straight.losses[0], abs=1e-3)


def test_dataloader_workers_give_the_same_batches_and_leave_the_global_rng_alone(prefix: str) -> None:
    """The 135M / 1.7B recipes load with data.num_workers=2: same microbatches as in-process loading,
    and starting the workers does not draw from torch's global generator (the dropout stream a
    checkpoint restores)."""
    import torch

    from megatron_reflect.data.dataset import DataConfig
    from megatron_reflect.train.data_loading import build_datasets, microbatches

    ds, _ = build_datasets(DataConfig(blend=[prefix], seq_length=64, split="100,0,0"), 48, 0)
    for dp_rank, dp_size, consumed in ((0, 1, 0), (1, 2, 16)):
        plain = list(microbatches(ds, consumed, 48, 4, dp_rank, dp_size))
        before = torch.get_rng_state()
        workers = microbatches(ds, consumed, 48, 4, dp_rank, dp_size, num_workers=2)
        assert torch.equal(torch.get_rng_state(), before)
        workers = list(workers)
        assert len(workers) == len(plain) == (48 - consumed) // (4 * dp_size)
        for a, b in zip(plain, workers):
            assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_only_checkpoint_resumes_with_fresh_moments(prefix: str, tmp_path: Path, caplog) -> None:
    import logging

    from megatron_reflect.convert.tensor_io import DistWeights

    common = ("schedule.train_steps=4", "schedule.warmup_steps=1", "schedule.eval_interval=0",
              "checkpoint.save_optimizer=false")
    first = train(_cfg(prefix, tmp_path / "run", *common, "schedule.exit_interval=2"))
    meta = json.loads((first.last_checkpoint / "meta.json").read_text())
    assert meta["optimizer"] is None and meta["step"] == 2
    keys = DistWeights(first.last_checkpoint / "dist").keys()
    assert not any(k.startswith("optimizer") for k in keys) and any(k.startswith("model.") for k in keys)
    with caplog.at_level(logging.WARNING, logger="megatron_reflect.train.checkpointing"):
        second = train(_cfg(prefix, tmp_path / "run", *common))
    assert second.steps == 4 and len(second.losses) == 2
    assert "holds no optimizer state" in caplog.text and "fresh AdamW moments" in caplog.text


def test_cpu_bf16_steps_fp32_masters_and_resumes_exactly(prefix: str, tmp_path: Path) -> None:
    """precision.dtype=bf16 on the CPU: bf16 weights, AdamW on fp32 masters that the checkpoint holds, so a
    stopped run resumes with the uninterrupted run's losses; and the masters keep updates that bf16 rounds away."""
    import torch

    from megatron_reflect.convert.tensor_io import DistWeights
    from megatron_reflect.runtime.distributed import ParallelConfig, init_runtime, shutdown_runtime
    from megatron_reflect.train.config import OptimConfig
    from megatron_reflect.train.optim import TorchOptimizer

    common = ("schedule.train_steps=6", "schedule.warmup_steps=2", "schedule.eval_interval=0", "precision.dtype=bf16")
    straight = train(_cfg(prefix, tmp_path / "straight", *common))
    first = train(_cfg(prefix, tmp_path / "stopped", *common, "schedule.exit_interval=3"))
    meta = json.loads((first.last_checkpoint / "meta.json").read_text())
    assert meta["optimizer"]["master_weights"] == "fp32"
    keys = DistWeights(first.last_checkpoint / "dist").keys()
    assert any(k.startswith("optimizer.state.fp32_param") for k in keys)
    second = train(_cfg(prefix, tmp_path / "stopped", *common))
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=1e-6, rel=0)
    fp32 = train(_cfg(prefix, tmp_path / "fp32", *common[:3]))
    assert straight.losses[0] == pytest.approx(fp32.losses[0], abs=0.02)  # same init, bf16 arithmetic
    assert straight.losses != fp32.losses

    # One bf16 weight at 1.0 (bf16 spacing there: 2^-7) and AdamW steps of ~1e-3: each alone rounds away.
    weight = torch.nn.Parameter(torch.ones(4, 4, dtype=torch.bfloat16))
    opt = TorchOptimizer([torch.nn.ParameterList([weight])], OptimConfig(lr=1e-3, weight_decay=0.0, clip_grad=0.0))
    plain = torch.nn.Parameter(torch.ones(4, 4, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([plain], lr=1e-3, weight_decay=0.0)
    init_runtime(ParallelConfig())  # the clipping norm asks parallel_state for the TP group
    try:
        for _ in range(20):
            weight.grad = torch.ones_like(weight)
            plain.grad = torch.ones_like(plain)
            opt.step()
            plain_opt.step()
    finally:
        shutdown_runtime()
    master = opt.master[weight]
    assert master.dtype == torch.float32 and master.flatten()[0].item() == pytest.approx(1.0 - 20e-3, abs=1e-4)
    assert torch.equal(weight.detach(), master.to(torch.bfloat16))  # the bf16 weight followed its master down
    assert weight.flatten()[0].item() < 0.99
    assert torch.all(plain.detach() == 1.0)  # without masters the same steps are lost
