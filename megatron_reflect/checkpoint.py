"""Checkpoint directory contract shared by the trainer and the converters.

A checkpoint is one directory::

    <dir>/model_config.yaml   the ModelConfig (architecture + tokenizer vocab size)
    <dir>/meta.json           step, tokenizer, reflection template, anything small
    <dir>/dist/               megatron dist_checkpointing (torch_dist): model weights under
                              ``model.``; the trainer adds ``optimizer.`` etc. beside them

Weights are saved through ``model.sharded_state_dict()``, so a checkpoint written with
one TP/PP layout loads into any other.  Directories are written under a temporary name
and renamed when complete: a directory without ``meta.json`` is never a checkpoint.
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

MODEL_CONFIG = "model_config.yaml"
META = "meta.json"
DIST = "dist"


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / META).is_file() and (p / MODEL_CONFIG).is_file() and (p / DIST).is_dir()


def read_model_config(path: str | Path) -> ModelConfig:
    p = Path(path)
    if not is_checkpoint(p):
        raise ConversionError(f"{p}: not a megatron_reflect checkpoint (needs {MODEL_CONFIG}, {META} and {DIST}/)")
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


def save_checkpoint(path: str | Path, model_chunks: list[torch.nn.Module], model_cfg: ModelConfig,
                    meta: dict[str, Any] | None = None, extra_sharded: dict[str, Any] | None = None) -> Path:
    """Save weights (+ ``extra_sharded`` entries) collectively; rank 0 writes the small files."""
    from megatron.core import dist_checkpointing

    final = Path(path)
    tmp = final.with_name(final.name + ".tmp")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / DIST).mkdir(parents=True)
    _barrier()
    state = model_sharded_state_dict(model_chunks)
    if extra_sharded:
        state.update(extra_sharded)
    dist_checkpointing.save(state, str(tmp / DIST))
    _barrier()
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
    """Load weights into ``model_chunks`` (any TP/PP layout) from a checkpoint directory."""
    from megatron.core import dist_checkpointing

    p = Path(path)
    if not is_checkpoint(p):
        raise ConversionError(f"{p}: not a megatron_reflect checkpoint (needs {MODEL_CONFIG}, {META} and {DIST}/)")
    state = dist_checkpointing.load(model_sharded_state_dict(model_chunks), str(p / DIST))
    if len(model_chunks) == 1:
        model_chunks[0].load_state_dict(_strip(state, "model."), strict=False)
    else:
        for i, chunk in enumerate(model_chunks):
            chunk.load_state_dict(_strip(state, f"model{i}."), strict=False)


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
