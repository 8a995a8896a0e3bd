"""Move weights between one full (TP=1, PP=1) state dict and this rank's model shard.

A *full* state dict uses global layer numbers and unsplit tensors (padded vocabulary
rows included), under megatron's own parameter names.  It is the common currency of the
layout-changing tools: checkpoint conversion gathers to it and scatters from it, and
tests build every parallel layout from one reference model through it.  Only the
Llama-family GPTModel of :mod:`megatron_reflect.model.provider` is supported:
column-parallel weights split on dim 0 (SwiGLU's fused [gate; up] split per half),
row-parallel on dim 1, vocabulary-parallel embeddings on dim 0, norms replicated.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

from megatron_reflect.errors import ConversionError

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")


def _layer_offset(model: torch.nn.Module) -> int:
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(model.config)


def to_global_name(name: str, offset: int) -> str:
    m = _LAYER.match(name)
    return f"decoder.layers.{int(m.group(1)) + offset}.{m.group(2)}" if m else name


def _is_swiglu_fc1(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight")


def _shard(full: torch.Tensor, param: torch.nn.Parameter, name: str, tp_rank: int, tp: int) -> torch.Tensor:
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if _is_swiglu_fc1(name):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp, dim=dim)[tp_rank]


def _unshard(shards: list[torch.Tensor], param: torch.nn.Parameter, name: str) -> torch.Tensor:
    if len(shards) == 1 or not getattr(param, "tensor_model_parallel", False):
        return shards[0]
    if _is_swiglu_fc1(name):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=param.partition_dim)


def _local_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters()}


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard of every parameter out of ``full`` (names checked both ways)."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    offset = _layer_offset(model)
    for name, param in _local_params(model).items():
        key = to_global_name(name, offset)
        if key == "output_layer.weight" and key not in full and model.share_embeddings_and_output_weights:
            key = "embedding.word_embeddings.weight"
        if key not in full:
            raise ConversionError(f"state dict has no tensor for parameter '{key}'")
        src = _shard(full[key].to(param.dtype), param, key, tp_rank, tp)
        if src.shape != param.shape:
            raise ConversionError(f"'{key}': shape {tuple(src.shape)} does not fit parameter {tuple(param.shape)}")
        param.copy_(src)


@torch.no_grad()
def gather_full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All-gather the full state dict onto every rank (collective over TP and PP groups).

    Each pipeline stage contributes its layers; tied output weights are reported once,
    as ``embedding.word_embeddings.weight``.
    """
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    local: dict[str, torch.Tensor] = {}
    offset = _layer_offset(model)
    for name, param in _local_params(model).items():
        if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
            continue
        tensor = param.detach()
        if tp > 1 and getattr(param, "tensor_model_parallel", False):
            shards = [torch.empty_like(tensor) for _ in range(tp)]
            dist.all_gather(shards, tensor.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            tensor = _unshard(shards, param, name)
        local[to_global_name(name, offset)] = tensor.cpu().clone()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return local
    parts: list[dict[str, torch.Tensor] | None] = [None] * pp
    dist.all_gather_object(parts, local, group=parallel_state.get_pipeline_model_parallel_group())
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in (part or {}).items():
            merged.setdefault(k, v)
    return merged
