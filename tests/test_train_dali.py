"""The optional DALI loader yields exactly the torch DataLoader's microbatches (skipped without DALI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("nvidia.dali", reason="the dali extra (nvidia-dali-cuda130) is not installed")

from train_corpus import make_dataset  # noqa: E402

from megatron_reflect.config import resolve  # noqa: E402
from megatron_reflect.data.dataset import DataConfig  # noqa: E402
from megatron_reflect.train.data_loading import build_datasets, microbatches  # noqa: E402
from megatron_reflect.train.loop import train  # noqa: E402
from megatron_reflect.train.recipes import get_recipe  # noqa: E402


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("dali") / "data", n_records=120)


@pytest.mark.parametrize("dp_rank,dp_size,consumed", [(0, 1, 0), (1, 2, 8)])
def test_dali_batches_equal_torch_batches(prefix: str, dp_rank: int, dp_size: int, consumed: int) -> None:
    ds, _ = build_datasets(DataConfig(blend=[prefix], seq_length=64, split="100,0,0"), 48, 0)
    torch_batches = list(microbatches(ds, consumed, 48, 4, dp_rank, dp_size))
    dali_batches = list(microbatches(ds, consumed, 48, 4, dp_rank, dp_size, loader="dali"))
    assert len(torch_batches) == len(dali_batches) == (48 - consumed) // (4 * dp_size)
    for a, b in zip(torch_batches, dali_batches):
        assert set(b) == {"tokens", "labels", "loss_mask", "position_ids", "reflection_meta"}
        for key, value in b.items():
            assert value.dtype == a[key].dtype and torch.equal(value, a[key]), key
    assert any(bool((b["reflection_meta"] != 0).any()) for b in dali_batches)  # reflections are in there


def test_training_with_dali_gives_the_same_losses(prefix: str, tmp_path: Path) -> None:
    def run(loader: str) -> list[float]:
        cfg = resolve(get_recipe("tiny-cpu"), None, [
            f"run_dir={tmp_path / loader}", f"data.blend=[{prefix}]", "data.seq_length=64",
            "data.split=100,0,0", "schedule.train_steps=3", "schedule.warmup_steps=1", "schedule.eval_interval=0",
            "checkpoint.save_at_end=false", "checkpoint.save_interval=0", "logging.tensorboard=false",
            f"data_loader={loader}"])
        return train(cfg).losses

    assert run("dali") == run("torch")
