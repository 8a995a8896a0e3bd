"""Full training state on top of the checkpoint directory contract (megatron_reflect/checkpoint.py).

A training checkpoint is a model checkpoint (``model.`` weights, loadable by the
converters and into any TP/PP layout) plus, beside the weights in the same torch_dist
directory:

* ``optimizer.state.<exp_avg|exp_avg_sq>.<param>`` - AdamW moments, sharded exactly like
  their parameters, so they also reshard to another TP/PP layout (GPU: megatron's
  distributed-optimizer state, ``fully_reshardable``);
* ``rng_state`` - one object per (pp, tp, dp) rank: python, numpy, torch (and CUDA)
  generators; restored only when the layout is unchanged (a different layout has other
  ranks, so their streams cannot carry over);

and in ``meta.json``: step, consumed samples (the data position), the LR schedule, the
parallel layout, the tokenizer description and the reflection template.  The LR schedule
is a function of the step, so the step restores it.

Checkpoints live in ``<save_dir>/step_<N>``; after each save only the newest
``keep_last`` are kept.  Saving costs one torch_dist write of ~3x the weights (AdamW).
"""

from __future__ import annotations

import queue
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_reflect.checkpoint import (
    DIST,
    is_checkpoint,
    load_model_weights,
    model_sharded_state_dict,
    read_meta,
    save_checkpoint,
)
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime.distributed import Runtime
from megatron_reflect.train.optim import MegatronOptimizer, Optimizer, TorchOptimizer

_PREFIX = "step_"


@dataclass
class TrainState:
    """Where a run is: optimizer steps taken and samples consumed from the training set."""

    step: int = 0
    consumed_samples: int = 0


def checkpoint_path(save_dir: str | Path, step: int) -> Path:
    return Path(save_dir) / f"{_PREFIX}{step:08d}"


def list_checkpoints(save_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``save_dir``, oldest first (partial ``.tmp`` dirs are ignored)."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()
             and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    found = list_checkpoints(save_dir)
    return found[-1] if found else None


def _layout(rt: Runtime) -> dict[str, int]:
    return {"tp": rt.tp_size, "pp": rt.pp_size, "dp": rt.dp_size}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        from megatron.core import tensor_parallel

        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        from megatron.core import tensor_parallel

        torch.cuda.set_rng_state(state["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(rt: Runtime) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    offset = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
              parallel_state.get_data_parallel_rank())
    return {"rng_state": ShardedObject("rng_state", _rng_state(), (rt.pp_size, rt.tp_size, rt.dp_size), offset,
                                       replica_id=0)}


def _torch_optimizer_sharded(optimizer: TorchOptimizer, model_chunks: list[torch.nn.Module]) -> dict[str, Any]:
    """AdamW moments as sharded tensors mirroring their parameters' sharding."""
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        make_sharded_optimizer_tensor,
    )

    optimizer.init_state()
    params = optimizer.params()
    id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict(model_chunks), params)
    out: dict[str, Any] = {}
    for i, p in enumerate(params):
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"optimizer.{key}.{i}"] = make_sharded_optimizer_tensor(
                id_map[i], optimizer.inner.state[p][key], prefix=f"optimizer.state.{key}")
    return out


def _megatron_optimizer_sharded(optimizer: MegatronOptimizer, model_chunks: list[torch.nn.Module],
                                is_loading: bool) -> dict[str, Any]:
    return {"optimizer": optimizer.inner.sharded_state_dict(
        model_sharded_state_dict(model_chunks), is_loading=is_loading,
        metadata={"distrib_optim_sharding_type": "fully_reshardable"})}


def _optimizer_sharded(optimizer: Optimizer, model_chunks: list[torch.nn.Module], is_loading: bool) -> dict[str, Any]:
    if isinstance(optimizer, TorchOptimizer):
        return _torch_optimizer_sharded(optimizer, model_chunks)
    return _megatron_optimizer_sharded(optimizer, model_chunks, is_loading)  # type: ignore[arg-type]


def _in_process_write_queue() -> None:
    """Let megatron's synchronous torch_dist save collect its results in this process.

    ``filesystem_async.get_write_results_queue`` (megatron-core 0.19.2, line 65) creates a
    ``multiprocessing.Manager().Queue()`` on the first save of a process, for async saves
    that write from another process.  Starting that manager spawns a process that
    re-imports ``__main__`` (5-8 s on a busy 2-core machine, per rank).  Our saves are
    synchronous: the writer threads run in this process, so a thread-safe ``queue.Queue``
    does the same job at no cost.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def save_training_state(save_dir: str | Path, model_chunks: list[torch.nn.Module], model_cfg: ModelConfig,
                        optimizer: Optimizer, state: TrainState, rt: Runtime, keep_last: int,
                        meta: dict[str, Any] | None = None) -> Path:
    """Save everything needed to resume at ``state``; prune to the newest ``keep_last``."""
    _in_process_write_queue()
    extra = _optimizer_sharded(optimizer, model_chunks, is_loading=False)
    extra.update(_rng_sharded(rt))
    full_meta = dict(meta or {})
    full_meta.update(step=state.step, consumed_samples=state.consumed_samples, parallel=_layout(rt))
    path = save_checkpoint(checkpoint_path(save_dir, state.step), model_chunks, model_cfg, meta=full_meta,
                           extra_sharded=extra)
    if rt.is_main:
        for old in list_checkpoints(save_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return path


def load_training_state(path: str | Path, model_chunks: list[torch.nn.Module], optimizer: Optimizer,
                        rt: Runtime) -> TrainState:
    """Restore weights, optimizer, RNG (same layout only) and the data position from ``path``."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    load_model_weights(path, model_chunks)
    meta = read_meta(path)
    template = _optimizer_sharded(optimizer, model_chunks, is_loading=True)
    same_layout = meta.get("parallel") == _layout(rt)
    if same_layout:
        template.update(_rng_sharded(rt))
    loaded = dist_checkpointing.load(template, str(path / DIST))
    step = int(meta["step"])
    if isinstance(optimizer, TorchOptimizer):
        for i, p in enumerate(optimizer.params()):
            state = optimizer.inner.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].copy_(loaded[f"optimizer.{key}.{i}"])
            state["step"] = torch.tensor(float(step))
    else:
        optimizer.inner.load_state_dict(loaded["optimizer"])  # type: ignore[attr-defined]
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    return TrainState(step=step, consumed_samples=int(meta["consumed_samples"]))
