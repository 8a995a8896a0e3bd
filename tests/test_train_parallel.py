"""The trainer under tensor and pipeline parallelism, on a real reflected dataset.

Every run starts from one initial checkpoint written at TP=1/PP=1 (``checkpoint.load``),
so the layouts differ only in how the work is split.  Checked:

* TP=2, PP=2 and DP=2 training runs give the TP=1 losses over 4 AdamW steps with clipping
  (|diff| < 2e-5: float reduction order only); the loss is normalised per token over the
  global batch, so the DP split does not change it;
* a checkpoint saved at TP=1 loads at TP=2 and gives the same logits (|diff| < 1e-5);
* a TP=1 training checkpoint (weights + AdamW moments) resumed at TP=2 continues with the
  TP=1 run's losses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from train_corpus import make_dataset

from megatron_reflect.config import resolve
from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed

STEPS = 4
TOL = 2e-5


def _config(prefix: str, run_dir: Path, init: str | None, tp: int = 1, pp: int = 1, extra: list[str] = ()):
    from megatron_reflect.train.recipes import get_recipe

    return resolve(get_recipe("tiny-cpu"), None, [
        f"run_dir={run_dir}", f"data.blend=[{prefix}]", "data.seq_length=64", f"checkpoint.load={init}",
        f"schedule.train_steps={STEPS}", "schedule.micro_batch_size=2", "schedule.global_batch_size=4",
        "schedule.warmup_steps=1", "schedule.eval_interval=0", "checkpoint.save_interval=2",
        "logging.log_interval=1", "logging.tensorboard=false",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}", *extra])


def _train(cfg) -> dict:
    from megatron_reflect.train.loop import train

    result = train(cfg)
    return {"losses": result.losses, "grad_norm": result.final["grad_norm"]}


def _save_init(prefix: str, path: str) -> str:
    """A freshly initialised tiny model with the dataset's vocabulary, saved at TP=1/PP=1."""
    import dataclasses

    from megatron_reflect.checkpoint import save_checkpoint
    from megatron_reflect.data.dataset import read_dataset_info
    from megatron_reflect.model import build_gpt_model, get_preset
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=5)
    vocab = int(read_dataset_info(prefix)["tokenizer"]["vocab_size"])
    model_cfg = dataclasses.replace(get_preset("tiny"), vocab_size=vocab)
    save_checkpoint(path, [build_gpt_model(model_cfg, ParallelConfig())], model_cfg, meta={"step": 0})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train_parallel")
    prefix = make_dataset(root / "data")
    [init] = run_distributed(_save_init, 1, prefix, str(root / "init"))
    base_dir = root / "tp1"
    [base] = run_distributed(_train, 1, _config(prefix, base_dir, init))
    return {"root": root, "prefix": prefix, "init": init, "losses": base["losses"], "grad_norm": base["grad_norm"],
            "base_dir": base_dir}


def test_tp1_run_learns(setup) -> None:
    losses = setup["losses"]
    assert setup["grad_norm"] > 0.1  # clipping at 1.0 is in play at this scale
    assert len(losses) == STEPS
    assert losses[0] == pytest.approx(torch.log(torch.tensor(384.0)).item(), abs=0.2)  # near uniform at init
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (1, 1)], ids=["tp2", "pp2", "dp2"])
def test_parallel_layout_gives_tp1_losses(setup, tp: int, pp: int) -> None:
    cfg = _config(setup["prefix"], setup["root"] / f"tp{tp}pp{pp}", setup["init"], tp=tp, pp=pp)
    ranks = run_distributed(_train, 2, cfg)
    for got in ranks:  # every rank reports the global loss
        losses = got["losses"]
        assert len(losses) == STEPS
        for step, (a, b) in enumerate(zip(setup["losses"], losses)):
            assert abs(a - b) < TOL, (step, setup["losses"], losses)
        # the gradient norm (clipping's input) is the global one: shards summed, copies counted once
        assert got["grad_norm"] == pytest.approx(setup["grad_norm"], rel=1e-4)


def _logits(ckpts: list[str], tp: int, tokens: torch.Tensor) -> list[torch.Tensor]:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_reflect.checkpoint import load_model_weights, read_model_config
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.runtime import init_runtime

    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    init_runtime(parallel, seed=99)  # a different seed: every weight must come from the checkpoint
    assert parallel_state.get_tensor_model_parallel_world_size() == tp
    out = []
    for ckpt in ckpts:
        model = build_gpt_model(read_model_config(ckpt), parallel)
        load_model_weights(ckpt, [model])
        with torch.no_grad():
            logits = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
            out.append(gather_from_tensor_model_parallel_region(logits))
    return out


def test_tp1_checkpoint_loads_at_tp2_with_identical_outputs(setup) -> None:
    ckpt = str(setup["base_dir"] / "checkpoints" / f"step_{STEPS:08d}")
    tokens = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(3))
    [[tp1, init]] = run_distributed(_logits, 1, [ckpt, setup["init"]], 1, tokens)
    tp2 = run_distributed(_logits, 2, [ckpt], 2, tokens)
    assert tp1.shape == (2, 16, 384)
    for [other] in tp2:
        assert torch.allclose(other, tp1, atol=1e-5), float((other - tp1).abs().max())
    # the trained weights are not the initial ones: outputs differ from the initial checkpoint's
    assert float((init - tp1).abs().max()) > 1e-2


def test_tp1_training_checkpoint_resumes_at_tp2(setup) -> None:
    """Weights and AdamW moments saved at TP=1 step 2, resumed at TP=2: steps 3-4 match."""
    run_dir = setup["root"] / "resume_tp2"
    saved = setup["base_dir"] / "checkpoints" / f"step_{2:08d}"
    shutil.copytree(saved, run_dir / "checkpoints" / saved.name)
    cfg = _config(setup["prefix"], run_dir, None, tp=2)
    ranks = run_distributed(_train, 2, cfg)
    for got in ranks:
        losses = got["losses"]
        assert len(losses) == STEPS - 2
        for a, b in zip(setup["losses"][2:], losses):
            assert abs(a - b) < TOL, (setup["losses"], losses)
