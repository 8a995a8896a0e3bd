"""Full training state on top of the checkpoint directory contract (megatron_reflect/checkpoint.py).

A training checkpoint is a model checkpoint (``model.`` weights, loadable by the
converters and into any TP/PP layout) plus, beside the weights in the same torch_dist
directory:

* the optimizer state.  CPU (torch AdamW): ``optimizer.state.<exp_avg|exp_avg_sq>.<param>``,
  sharded exactly like their parameters, so they reshard to another TP/PP layout.  GPU
  (megatron's distributed optimizer): by default ``dp_reshardable``, each data-parallel
  rank's slice of the fp32 main weights and moments written as it lies in memory (no
  gather; resumes at the same TP/PP with any DP size); with
  ``checkpoint.optimizer_reshardable`` ``fully_reshardable`` (gathered into parameter
  shapes while saving; resumes at any layout).  The two paths' states are different
  objects, so a CPU checkpoint resumes on a GPU (or back) only as weights: the loader
  says so and names ``checkpoint.load``;
* ``rng_state`` - one object per (pp, tp, dp) rank: python, numpy, torch (and CUDA)
  generators; restored only when the layout is unchanged (a different layout has other
  ranks, so their streams cannot carry over);

and in ``meta.json``: step, consumed samples (the data position), the parallel layout,
the optimizer format, the tokenizer description and the reflection template.  The LR
schedule is a function of the step, so the step restores it.

Checkpoints live in ``<save_dir>/step_<N>``; after each save only the newest
``keep_last`` are kept (renamed to ``*.deleting`` before removal, so a kill mid-removal
leaves no half-deleted checkpoint that looks complete).  Leftovers of a killed save
(``step_<N>.tmp``) are never loaded and are removed by the next save.  Saving costs one
torch_dist write of ~3x the weights (AdamW; ``save_optimizer=false``: the weights only).
"""

from __future__ import annotations

import logging
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
    TMP_SUFFIX,
    is_checkpoint,
    load_model_weights,
    load_sharded,
    model_sharded_state_dict,
    read_meta,
    save_checkpoint,
)
from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime.device import use_cuda
from megatron_reflect.runtime.distributed import Runtime
from megatron_reflect.train.optim import MegatronOptimizer, Optimizer, TorchOptimizer

log = logging.getLogger(__name__)

_PREFIX = "step_"
_DELETING = ".deleting"
TORCH_ADAMW = "torch_adamw"  # the CPU path's optimizer state
MEGATRON_DISTRIBUTED = "megatron_distributed"  # the GPU path's


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
    if use_cuda():
        from megatron.core import tensor_parallel

        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if use_cuda() and "cuda" in state:
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


def _torch_optimizer_sharded(optimizer: TorchOptimizer, model_chunks: list[torch.nn.Module],
                             masters: bool) -> dict[str, Any]:
    """AdamW moments (and fp32 masters of bf16 weights) as sharded tensors mirroring their parameters' sharding."""
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
                id_map[i], optimizer.state_of(p)[key], prefix=f"optimizer.state.{key}")
        if masters and p in optimizer.master:
            out[f"optimizer.fp32_param.{i}"] = make_sharded_optimizer_tensor(
                id_map[i], optimizer.master[p], prefix="optimizer.state.fp32_param")
    return out


def _megatron_optimizer_sharded(optimizer: MegatronOptimizer, model_chunks: list[torch.nn.Module],
                                is_loading: bool, sharding: str) -> dict[str, Any]:
    return {"optimizer": optimizer.inner.sharded_state_dict(
        model_sharded_state_dict(model_chunks), is_loading=is_loading,
        metadata={"distrib_optim_sharding_type": sharding})}


def optimizer_format(optimizer: Optimizer, reshardable: bool) -> dict[str, str]:
    """What ``meta.json`` records about the optimizer state a save writes."""
    if isinstance(optimizer, TorchOptimizer):
        fmt = {"format": TORCH_ADAMW, "sharding": "model_space"}
        if optimizer.master:
            fmt["master_weights"] = "fp32"
        return fmt
    return {"format": MEGATRON_DISTRIBUTED, "sharding": "fully_reshardable" if reshardable else "dp_reshardable"}


def _optimizer_sharded(optimizer: Optimizer, model_chunks: list[torch.nn.Module], is_loading: bool,
                       fmt: dict[str, str]) -> dict[str, Any]:
    if isinstance(optimizer, TorchOptimizer):
        return _torch_optimizer_sharded(optimizer, model_chunks, masters=fmt.get("master_weights") == "fp32")
    return _megatron_optimizer_sharded(optimizer, model_chunks, is_loading, fmt["sharding"])  # type: ignore[arg-type]


def _check_resumable(path: Path, saved: dict[str, Any] | None, wanted: dict[str, str], layout_changed: bool) -> None:
    """A clear error where the saved optimizer state cannot go into this run's optimizer."""
    if saved is None:
        return
    if saved.get("format") != wanted["format"]:
        paths = {TORCH_ADAMW: "the CPU trainer (torch AdamW)", MEGATRON_DISTRIBUTED: "the GPU trainer (megatron's "
                 "distributed optimizer)"}
        raise ConfigError(f"{path}: its optimizer state was written by {paths.get(saved.get('format'), saved)} and "
                          f"cannot be resumed by {paths[wanted['format']]}; start from its weights instead: "
                          f"checkpoint.load={path} checkpoint.resume=false (or another checkpoint.save_dir)")
    if layout_changed and saved.get("sharding") == "dp_reshardable":
        raise ConfigError(f"{path}: the distributed-optimizer state was saved dp_reshardable, which resumes only at "
                          f"the TP/PP layout that wrote it; resume with that layout, or load the weights alone "
                          f"(checkpoint.load={path} checkpoint.resume=false); save with "
                          f"checkpoint.optimizer_reshardable=true to change layouts later")


def _remove_leftovers(save_dir: Path) -> None:
    """Partial saves (``*.tmp``) and interrupted prunes (``*.deleting``) of earlier, killed runs."""
    for p in save_dir.iterdir() if save_dir.is_dir() else ():
        if p.name.startswith(_PREFIX) and (p.name.endswith(TMP_SUFFIX) or p.name.endswith(_DELETING)):
            shutil.rmtree(p, ignore_errors=True)


def _prune(save_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(save_dir)[:-keep_last]:
        doomed = old.with_name(old.name + _DELETING)
        old.rename(doomed)  # from here on it is not a checkpoint, whatever part of it remains
        shutil.rmtree(doomed, ignore_errors=True)


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
                        meta: dict[str, Any] | None = None, save_optimizer: bool = True,
                        optimizer_reshardable: bool = False) -> Path:
    """Save everything needed to resume at ``state``; prune to the newest ``keep_last``.

    ``save_optimizer=False``: weights, RNG and data position only (resumes with fresh moments).
    """
    _in_process_write_queue()
    save_dir = Path(save_dir)
    if rt.is_main:
        _remove_leftovers(save_dir)
    fmt = optimizer_format(optimizer, optimizer_reshardable)
    extra = _optimizer_sharded(optimizer, model_chunks, False, fmt) if save_optimizer else {}
    extra.update(_rng_sharded(rt))
    full_meta = dict(meta or {})
    full_meta.update(step=state.step, consumed_samples=state.consumed_samples, parallel=_layout(rt),
                     optimizer=fmt if save_optimizer else None)
    path = save_checkpoint(checkpoint_path(save_dir, state.step), model_chunks, model_cfg, meta=full_meta,
                           extra_sharded=extra)
    if rt.is_main:
        _prune(save_dir, keep_last)
    if dist.is_initialized():
        dist.barrier()
    return path


def load_training_state(path: str | Path, model_chunks: list[torch.nn.Module], optimizer: Optimizer,
                        rt: Runtime) -> TrainState:
    """Restore weights, optimizer, RNG (same layout only) and the data position from ``path``."""
    path = Path(path)
    meta = read_meta(path)
    same_layout = meta.get("parallel") == _layout(rt)
    saved_parallel = meta.get("parallel") or {}
    layout_changed = (saved_parallel.get("tp"), saved_parallel.get("pp")) != (rt.tp_size, rt.pp_size)
    saved_fmt = meta.get("optimizer", {"format": TORCH_ADAMW, "sharding": "model_space"})  # older CPU checkpoints
    wanted = optimizer_format(optimizer, reshardable=False)
    _check_resumable(path, saved_fmt, wanted, layout_changed)
    load_model_weights(path, model_chunks)
    optimizer.reload_model_params()  # masters from the weights; replaced below where the state holds them
    template = _optimizer_sharded(optimizer, model_chunks, True, saved_fmt) if saved_fmt is not None else {}
    if same_layout:
        template.update(_rng_sharded(rt))
    loaded = load_sharded(template, path) if template else {}
    step = int(meta["step"])
    if saved_fmt is None:
        log.warning("%s holds no optimizer state (saved with checkpoint.save_optimizer=false): resuming at step %d "
                    "with fresh AdamW moments", path, step)
    elif isinstance(optimizer, TorchOptimizer):
        for i, p in enumerate(optimizer.params()):
            state = optimizer.state_of(p)
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].copy_(loaded[f"optimizer.{key}.{i}"])
            state["step"] = torch.tensor(float(step))
            if f"optimizer.fp32_param.{i}" in loaded:
                with torch.no_grad():
                    optimizer.master[p].copy_(loaded[f"optimizer.fp32_param.{i}"])
    else:
        optimizer.inner.load_state_dict(loaded["optimizer"])  # type: ignore[attr-defined]
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    return TrainState(step=step, consumed_samples=int(meta["consumed_samples"]))
