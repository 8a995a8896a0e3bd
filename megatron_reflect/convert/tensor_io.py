"""Tensor files, one tensor at a time: Hugging Face safetensors in, torch_dist regions in,
safetensors shards out.

Why not load whole files: conversion must fit beside the model it converts, so nothing here
ever holds more than one tensor (or one layer's slice of a stacked megatron tensor).

* :class:`HFWeights` opens a safetensors file per read (the mapping is released right
  after, so touched pages do not pile up in the resident set).
* :class:`DistWeights` reads a region of a stacked torch_dist tensor (one layer) with
  torch.distributed.checkpoint and a small load planner that asks for just that region;
  no process group, no megatron import.
* :func:`write_safetensors` writes shards whose headers are computed up front from the
  planned shapes, then streams each tensor's bytes as it is produced.  Format: 8-byte
  little-endian header length, JSON header (padded to 8 bytes), raw little-endian data.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from megatron_reflect.errors import ConversionError

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class HFWeights:
    """The tensors of a Hugging Face model directory (``model.safetensors`` or an index)."""

    def __init__(self, hf_dir: str | Path) -> None:
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ConversionError(f"{index}: not a safetensors index ({exc})") from None
            files = {name: self.dir / file for name, file in weight_map.items()}
        elif (self.dir / SINGLE_FILE).is_file():
            files = {}
        else:
            raise ConversionError(f"{self.dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors weights "
                                  f"are supported)")
        self._files: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(set(files.values())) or [self.dir / SINGLE_FILE]:
            if not file.is_file():
                raise ConversionError(f"{index}: names shard {file.name}, which does not exist")
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        self._files[name] = file
                        self._shapes[name] = tuple(f.get_slice(name).get_shape())
            except Exception as exc:  # safetensors raises its own error types
                raise ConversionError(f"{file}: cannot read safetensors header ({exc})") from None

    def names(self) -> set[str]:
        return set(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def file(self, name: str) -> Path:
        return self._files[name]

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._files:
            raise ConversionError(f"{self.dir}: missing tensor '{name}'")
        with safe_open(str(self._files[name]), framework="pt") as f:
            return f.get_tensor(name)


def _region_planner(offsets: dict[str, tuple[int, ...]]):
    """A DCP load planner that reads ``state_dict[fqn]`` from ``offsets[fqn]`` of the stored tensor."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class RegionPlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for fqn, target in self.state_dict.items():
                region = ChunkStorageMetadata(offsets=torch.Size(offsets[fqn]), sizes=target.size())
                items += create_read_items_for_chunk_list(fqn, self.metadata.state_dict_metadata[fqn], [region])
            return LoadPlan(items)

        def lookup_tensor(self, index):  # targets are plain tensors holding just the region
            return self.state_dict[index.fqn]

    return RegionPlanner()


def _cached_reader(path: Path):
    """A FileSystemReader that unpickles the checkpoint's metadata once, not once per read."""
    from torch.distributed.checkpoint import FileSystemReader

    class CachedReader(FileSystemReader):
        def read_metadata(self):
            if not hasattr(self, "_metadata_cache"):
                self._metadata_cache = super().read_metadata()
            return self._metadata_cache

    return CachedReader(str(path))


class DistWeights:
    """Read tensors (or one layer of a stacked tensor) from a megatron torch_dist directory."""

    def __init__(self, dist_dir: str | Path) -> None:
        self.dir = Path(dist_dir)
        self._reader = _cached_reader(self.dir)
        try:
            self._meta = self._reader.read_metadata().state_dict_metadata
        except Exception as exc:  # a missing or corrupt .metadata file
            raise ConversionError(f"{self.dir}: cannot read torch_dist metadata ({exc})") from None

    def shape(self, key: str) -> tuple[int, ...] | None:
        md = self._meta.get(key)
        return tuple(md.size) if md is not None and hasattr(md, "size") else None

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key].properties.dtype

    def keys(self) -> set[str]:
        return set(self._meta)

    def read(self, key: str, layer: int | None = None) -> torch.Tensor:
        """The whole tensor ``key``, or its slice ``[layer]`` along the stacked layer axis."""
        import torch.distributed.checkpoint as dcp

        shape = self.shape(key)
        if shape is None:
            raise ConversionError(f"{self.dir}: checkpoint has no tensor '{key}'")
        size = shape if layer is None else (1, *shape[1:])
        offset = (0,) * len(shape) if layer is None else (layer, *(0,) * (len(shape) - 1))
        target = torch.empty(size, dtype=self.dtype(key))
        with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: target}, storage_reader=self._reader,
                     planner=_region_planner({key: offset}), no_dist=True)
        return target if layer is None else target[0]


@dataclass(frozen=True)
class Planned:
    """A tensor to be written: its name, shape and dtype (known before its data exists)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for s in self.shape:
            n *= s
        return n


def _shards(plan: list[Planned], max_shard_bytes: int) -> list[list[Planned]]:
    shards: list[list[Planned]] = [[]]
    size = 0
    for p in plan:
        if shards[-1] and size + p.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.nbytes
    return shards


def _header(shard: list[Planned]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for p in shard:
        entries[p.name] = {"dtype": SAFETENSORS_DTYPES[p.dtype], "shape": list(p.shape),
                           "data_offsets": [offset, offset + p.nbytes]}
        offset += p.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(out_dir: Path, plan: list[Planned], tensors: Iterable[tuple[str, torch.Tensor]],
                      max_shard_bytes: int) -> list[Path]:
    """Write ``tensors`` (arriving in ``plan`` order) as HF safetensors shards (+ index if several)."""
    shards = _shards(plan, max_shard_bytes)
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    stream: Iterator[tuple[str, torch.Tensor]] = iter(tensors)
    for shard, file_name in zip(shards, names):
        with open(out_dir / file_name, "wb") as f:
            f.write(_header(shard))
            for p in shard:
                name, tensor = next(stream)
                if name != p.name or tuple(tensor.shape) != p.shape:
                    raise ConversionError(f"internal: expected {p.name} {p.shape}, got {name} {tuple(tensor.shape)}")
                f.write(tensor.to(p.dtype).contiguous().view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(p.nbytes for p in plan)},
                 "weight_map": {p.name: n for shard, n in zip(shards, names) for p in shard}}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return [out_dir / n for n in names]
