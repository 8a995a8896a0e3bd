"""From the trainer's data config to per-rank microbatch iterators.

Every rank loads data: all TP and PP ranks of one data-parallel replica read the same
microbatches from the memory-mapped dataset (cheap: a few KB per microbatch), so the
reflection metadata reaches the loss on whichever rank computes it without a broadcast
over the TP group or a side channel through the pipeline.  Data-parallel replicas read
disjoint slices.  The position in the data is one integer, ``consumed_samples``: a
global batch is ``global_batch_size`` consecutive samples; within it, microbatch ``m``
of DP rank ``r`` holds samples ``[m*mbs*dp + r*mbs, ... + mbs)``.  Resuming is
re-creating the iterator at the saved ``consumed_samples``; the samples a step sees are
the same for any DP size.

The default loader is a torch ``DataLoader`` over that sampler; ``loader="dali"`` feeds
the same samples through an NVIDIA DALI pipeline (:mod:`megatron_reflect.train.dali_loader`,
an optional extra).  A DataLoader with workers draws its workers' base seed when an
iterator starts; it draws it from a generator of its own, not from torch's global one,
which holds the dropout stream a checkpoint restores (a resumed run starts its iterator
after the restore, an uninterrupted one never again).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from megatron_reflect.data.dataset import DataConfig, build_reflect_datasets, read_dataset_info
from megatron_reflect.errors import ConfigError, DataError


def blend_prefixes(blend: Sequence[str]) -> list[str]:
    """The dataset prefixes of a blend: ``["p"]`` or ``["30", "pA", "70", "pB"]``."""
    if not blend:
        raise ConfigError("data.blend is empty: give a dataset prefix written by tools/preprocess_data.py")
    if len(blend) == 1:
        return [blend[0]]
    if len(blend) % 2:
        raise ConfigError(f"data.blend {list(blend)}: expected one prefix or weight/prefix pairs")
    return [blend[i + 1] for i in range(0, len(blend), 2)]


def dataset_info(cfg: DataConfig) -> dict[str, Any]:
    """The stats JSON of the blend's datasets; all must share one tokenizer."""
    infos = [(p, read_dataset_info(p)) for p in blend_prefixes(cfg.blend)]
    first_prefix, first = infos[0]
    for prefix, info in infos[1:]:
        if info.get("tokenizer") != first.get("tokenizer"):
            raise DataError(f"data.blend: {prefix} was tokenized with {info.get('tokenizer')}, "
                            f"but {first_prefix} with {first.get('tokenizer')}")
    if "tokenizer" not in first or "vocab_size" not in first["tokenizer"]:
        raise DataError(f"{first_prefix}_stats.json has no tokenizer.vocab_size")
    return first


class MicrobatchSampler:
    """Index lists for this DP rank's microbatches, from ``consumed_samples`` on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int) -> None:
        self.total = total_samples
        self.start = consumed_samples
        self.mbs = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self) -> Iterator[list[int]]:
        stride = self.mbs * self.dp_size
        index = self.start
        while index + stride <= self.total:
            first = index + self.dp_rank * self.mbs
            yield list(range(first, first + self.mbs))
            index += stride

    def __len__(self) -> int:
        return max(self.total - self.start, 0) // (self.mbs * self.dp_size)


def build_datasets(cfg: DataConfig, train_samples: int, valid_samples: int) -> tuple[Dataset, Dataset | None]:
    """Train and validation datasets (built on every rank; see the module docstring)."""
    train, valid, _ = build_reflect_datasets(cfg, (train_samples, valid_samples, 0), is_built_on_rank=lambda: True)
    if train is None:
        raise DataError(f"data.split {cfg.split!r} leaves no training documents in {list(cfg.blend)}")
    if len(train) < train_samples:
        raise DataError(f"training dataset has {len(train)} samples, {train_samples} needed")
    return train, valid


def microbatches(dataset: Dataset, consumed_samples: int, total_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, num_workers: int = 0, loader: str = "torch",
                 pin_memory: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """An iterator of collated microbatches (dicts of tensors), for the forward step."""
    sampler = MicrobatchSampler(total_samples, consumed_samples, micro_batch_size, dp_rank, dp_size)
    if loader == "torch":
        if num_workers == 0 and not pin_memory:
            # what DataLoader does in-process, without its per-batch bookkeeping (~0.2 ms a batch)
            return (default_collate([dataset[i] for i in indices]) for indices in sampler)
        return iter(DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                               persistent_workers=False, generator=torch.Generator().manual_seed(0)))
    if loader == "dali":
        from megatron_reflect.train.dali_loader import dali_microbatches

        return dali_microbatches(dataset, sampler, num_threads=max(num_workers, 1))
    raise ConfigError(f"data loader {loader!r}: expected 'torch' or 'dali'")
