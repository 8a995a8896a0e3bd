"""The training and export CLIs survive SIGKILL (real subprocesses, deterministic kills).

``MEGATRON_REFLECT_KILL_AT`` (megatron_reflect/runtime/faults.py) makes the process SIGKILL
itself at a named point, so each kill lands exactly where it is meant to:

* ``tools/train.py`` (dropout 0.1, so the restored RNG state matters; DataLoader with 2
  workers): an uninterrupted 6-step run, saving every 2 steps, against a run killed after
  step 3 (between checkpoints), rerun and killed again while writing the step-4 checkpoint
  (shards on disk, not yet complete), rerun to the end.  Each rerun resumes from step 2, the
  last complete checkpoint, ignoring the partial one; metrics.jsonl then holds each step
  once and its losses equal the uninterrupted run's exactly; only complete checkpoints and
  no leftovers remain;
* ``tools/convert_checkpoint.py export`` killed after 3 of its tensors: no directory that
  loads as a model is left (the hidden temporary one has no config.json); the next export to
  the same place removes the dead one's leftovers and writes a model that loads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_corpus import make_dataset

from megatron_reflect.runtime.faults import KILL_ENV
from megatron_reflect.train.checkpointing import latest_checkpoint, list_checkpoints

ROOT = Path(__file__).parents[1]


def _cli(tool: str, args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(OMP_NUM_THREADS="1", MEGATRON_REFLECT_DEVICE="cpu")
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def _train_args(prefix: str, run_dir: Path) -> list[str]:
    return ["--recipe", "tiny-cpu", f"run_dir={run_dir}", f"data.blend=[{prefix}]", "data.seq_length=64",
            "data.num_workers=2", "schedule.train_steps=6", "schedule.warmup_steps=2", "schedule.micro_batch_size=4",
            "schedule.global_batch_size=8", "schedule.eval_interval=0", "checkpoint.save_interval=2",
            "checkpoint.keep_last=2", "logging.log_interval=1", "logging.tensorboard=false",
            "model.hidden_dropout=0.1", "model.attention_dropout=0.1"]


def _train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert len(steps) == len(set(steps)), steps  # each step once
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kill")
    prefix = make_dataset(root / "data")
    straight = root / "straight"
    done = _cli("train.py", _train_args(prefix, straight))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "prefix": prefix, "straight": straight}


def test_killed_training_resumes_from_the_last_complete_checkpoint(runs: dict) -> None:
    run_dir = runs["root"] / "killed"
    ckpts = run_dir / "checkpoints"
    args = _train_args(runs["prefix"], run_dir)

    killed = _cli("train.py", args, kill_at="train_step:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in list_checkpoints(ckpts)] == ["step_00000002"]
    assert sorted(_train_losses(run_dir)) == [1, 2, 3]  # step 3 was logged, then the process died

    killed_in_save = _cli("train.py", args, kill_at="checkpoint_commit:step_00000004")
    assert killed_in_save.returncode == -signal.SIGKILL, killed_in_save.stderr[-3000:]
    assert "resuming from" in killed_in_save.stderr and "step_00000002" in killed_in_save.stderr
    partial = ckpts / "step_00000004.tmp"
    assert (partial / "dist").is_dir() and any((partial / "dist").iterdir())  # the shards were being written
    assert latest_checkpoint(ckpts) == ckpts / "step_00000002"  # the partial one is not a checkpoint

    finished = _cli("train.py", args)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming from" in finished.stderr and "step_00000002" in finished.stderr
    assert _train_losses(run_dir) == _train_losses(runs["straight"])  # exactly: weights, moments, data, RNG
    assert [p.name for p in list_checkpoints(ckpts)] == ["step_00000004", "step_00000006"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000004", "step_00000006"]  # no leftovers


def test_dropout_is_active_in_these_runs(runs: dict, tmp_path: Path) -> None:
    """The first step's loss with dropout 0.1 is not the loss without it, so the masks (the RNG) count."""
    from megatron_reflect.config import resolve
    from megatron_reflect.train.loop import train
    from megatron_reflect.train.recipes import get_recipe

    args = _train_args(runs["prefix"], tmp_path / "no_dropout")[2:]
    cfg = resolve(get_recipe("tiny-cpu"), None, [*args, "schedule.train_steps=1", "model.hidden_dropout=0",
                                                 "model.attention_dropout=0", "data.num_workers=0",
                                                 "checkpoint.save_at_end=false", "schedule.warmup_steps=1"])
    without = train(cfg).losses[0]
    with_dropout = _train_losses(runs["straight"])[1]
    assert abs(with_dropout - without) > 1e-3, (with_dropout, without)


def test_killed_export_leaves_nothing_that_loads(runs: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    ckpt = runs["straight"] / "checkpoints" / "step_00000006"
    out = tmp_path / "hf"
    export = ["export", str(ckpt), str(out), "--max-shard-gb", "0.00005"]  # ~50 KB shards: several files
    killed = _cli("convert_checkpoint.py", export, kill_at="export_tensor:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists()
    [partial] = [p for p in tmp_path.iterdir()]
    assert partial.name.startswith(".hf.tmp-") and list(partial.glob("*.safetensors"))  # it was mid-write
    for d in tmp_path.iterdir():
        with pytest.raises((OSError, ValueError)):
            AutoModelForCausalLM.from_pretrained(str(d))

    from megatron_reflect.convert import export_checkpoint

    export_checkpoint(ckpt, out, max_shard_bytes=int(0.00005 * 1024**3))  # the rerun (in-process: cheaper)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # the dead export's leftovers are gone
    assert len(list(out.glob("*.safetensors"))) > 3
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.vocab_size == 384
