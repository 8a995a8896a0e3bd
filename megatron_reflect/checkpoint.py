"""Checkpoint directory contract shared by the trainer and the converters.

A checkpoint is one directory::

    <dir>/model_config.yaml   the ModelConfig (architecture + tokenizer vocab size)
    <dir>/meta.json           step, tokenizer, reflection template, anything small
    <dir>/dist/               megatron dist_checkpointing (torch_dist): model weights under
                              ``model.``; the trainer adds ``optimizer.`` etc. beside them

Weights are saved through ``model.sharded_state_dict()``, so a checkpoint written with
one TP/PP layout loads into any other.  Completeness, in the order things are written:
``dist/`` (megatron writes its ``metadata.json`` last, after every shard), then
``model_config.yaml`` and ``meta.json``, all under ``<dir>.tmp``, renamed to ``<dir>`` when
complete.  A directory is a checkpoint only with all of them, so a job killed at any
moment leaves nothing that loads as one.  Loading is strict: a tensor the model needs and
the checkpoint lacks fails with its name.  The one exception is ``_extra_state``: Transformer
Engine's layers keep their FP8 scaling metadata there, and a checkpoint written by the
local layer spec (the importer, every CPU run) has none for some of them (megatron's
``DotProductAttention``); a TE model starts such state afresh, as it would at step 0.

With data parallelism the save is spread over the data-parallel ranks (megatron's
fully-parallel save wrapper: each replicated shard is written by one of them instead of
all by DP rank 0); on a GPU the load is spread likewise (fully-parallel load wrapper, the
pieces exchanged over NCCL), so no rank reads the whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from megatron_reflect.config import from_dict, to_dict
from megatron_reflect.errors import ConversionError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime.device import use_cuda
from megatron_reflect.runtime.faults import kill_point

MODEL_CONFIG = "model_config.yaml"
META = "meta.json"
DIST = "dist"
DIST_COMPLETE = "metadata.json"  # written by megatron's dist_checkpointing.save after all shards
TMP_SUFFIX = ".tmp"


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return ((p / META).is_file() and (p / MODEL_CONFIG).is_file() and (p / DIST / DIST_COMPLETE).is_file()
            and not p.name.endswith(TMP_SUFFIX))


def read_model_config(path: str | Path) -> ModelConfig:
    p = Path(path)
    if not is_checkpoint(p):
        raise ConversionError(f"{p}: not a megatron_reflect checkpoint (needs {MODEL_CONFIG}, {META} and "
                              f"{DIST}/{DIST_COMPLETE})")
    with open(p / MODEL_CONFIG, encoding="utf-8") as f:
        return from_dict(ModelConfig, yaml.safe_load(f), where=str(p / MODEL_CONFIG))


def read_meta(path: str | Path) -> dict[str, Any]:
    with open(Path(path) / META, encoding="utf-8") as f:
        return json.load(f)


def model_sharded_state_dict(model_chunks: list[torch.nn.Module]) -> dict[str, Any]:
    if len(model_chunks) == 1:
        return model_chunks[0].sharded_state_dict(prefix="model.")
    sd: dict[str, Any] = {}
    for i, chunk in enumerate(model_chunks):
        sd.update(chunk.sharded_state_dict(prefix=f"model{i}."))
    return sd


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _data_parallel_group() -> dist.ProcessGroup | None:
    """Megatron's data-parallel group when there is more than one replica, else None."""
    if not dist.is_initialized():
        return None
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    return group if group.size() > 1 else None


def _save_strategy():
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    base = TorchDistSaveShardedStrategy("torch_dist", 1)
    group = _data_parallel_group()
    return base if group is None else FullyParallelSaveStrategyWrapper(base, group)


def _load_strategy():
    # The fully-parallel load exchanges the pieces with CUDA tensors (megatron
    # dist_checkpointing/exchange_utils.py allocates device="cuda"): GPU only.
    group = _data_parallel_group()
    if group is None or not use_cuda():
        return None
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistLoadShardedStrategy

    return FullyParallelLoadStrategyWrapper(TorchDistLoadShardedStrategy(), group)


def _any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks raise together)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=torch.device("cuda", torch.cuda.current_device()) if use_cuda() else "cpu")
    dist.all_reduce(t)
    return bool(t.item())


def is_optional(key: str) -> bool:
    """Entries a checkpoint may lack: Transformer Engine's per-module ``_extra_state`` (module docstring)."""
    return key.endswith("_extra_state")


def load_sharded(template: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``dist_checkpointing.load`` of ``template`` from ``<path>/dist``, strictly.

    A tensor or object the template asks for and the checkpoint lacks raises a
    ConversionError naming it (megatron's own error is a KeyError deep in the planner);
    :func:`is_optional` entries are left out of the result instead.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    p = Path(path)
    state, _, unexpected = dist_checkpointing.load(template, str(p / DIST), sharded_strategy=_load_strategy(),
                                                   strict=StrictHandling.RETURN_UNEXPECTED)
    absent = {key for key in unexpected if not is_optional(key)}
    if _any_rank(bool(absent)):
        names = sorted(absent)
        listed = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ConversionError(f"{p / DIST}: checkpoint has no tensor {listed}" if names else
                              f"{p / DIST}: another rank found tensors missing from this checkpoint")
    return state


def save_checkpoint(path: str | Path, model_chunks: list[torch.nn.Module], model_cfg: ModelConfig,
                    meta: dict[str, Any] | None = None, extra_sharded: dict[str, Any] | None = None) -> Path:
    """Save weights (+ ``extra_sharded`` entries) collectively; rank 0 writes the small files."""
    from megatron.core import dist_checkpointing

    final = Path(path)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / DIST).mkdir(parents=True)
    _barrier()
    state = model_sharded_state_dict(model_chunks)
    if extra_sharded:
        state.update(extra_sharded)
    dist_checkpointing.save(state, str(tmp / DIST), sharded_strategy=_save_strategy())
    _barrier()
    kill_point("checkpoint_commit", final.name)
    if rank0:
        with open(tmp / MODEL_CONFIG, "w", encoding="utf-8") as f:
            yaml.safe_dump(to_dict(model_cfg), f, sort_keys=False)
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta or {}, f, indent=2)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier()
    return final


def load_model_weights(path: str | Path, model_chunks: list[torch.nn.Module]) -> None:
    """Load weights into ``model_chunks`` (any TP/PP layout) from a checkpoint directory.

    Strict: every parameter and buffer of the model must come from the checkpoint
    (Transformer Engine's ``_extra_state``, FP8 scaling metadata, may be absent).
    """
    p = Path(path)
    if not is_checkpoint(p):
        raise ConversionError(f"{p}: not a megatron_reflect checkpoint (needs {MODEL_CONFIG}, {META} and "
                              f"{DIST}/{DIST_COMPLETE})")
    state = load_sharded(model_sharded_state_dict(model_chunks), p)
    prefixes = ["model."] if len(model_chunks) == 1 else [f"model{i}." for i in range(len(model_chunks))]
    for prefix, chunk in zip(prefixes, model_chunks):
        result = chunk.load_state_dict(_strip(state, prefix), strict=False)
        missing = [k for k in result.missing_keys if not is_optional(k)]
        if missing or result.unexpected_keys:
            raise ConversionError(f"{p / DIST}: weights do not match the model: missing {missing}, "
                                  f"unexpected {list(result.unexpected_keys)}")


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
