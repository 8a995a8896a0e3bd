"""ReflectGPTDataset: Megatron's GPTDataset plus the reflection metadata of every label.

GPTDataset packs documents into samples through (shuffle index -> sample index -> document
index, offset, length) reads of its low-level dataset.  Our low-level dataset is a token
IndexedDataset with a uint8 twin of identical structure (``indexed.PairedIndexedDataset``),
so the metadata of a sample is the *same walk* over the twin: ``__getitem__`` replays
GPTDataset's own ``_query_document_sample_shuffle_indices`` against a view whose ``get``
reads metadata.  ``reflection_meta[t]`` is the code of the token at position ``t+1``, the
token that ``labels[t]`` asks the model to predict.

Blends (BlendedDataset adds ``dataset_id``), splits and the ``.npy`` index cache work as for
GPTDataset; the cache files carry this class's name.  Cost per sample: one extra
memory-mapped read of ``sequence_length`` bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import get_blend_from_list

from megatron_reflect.data.indexed import TOKENS_SUFFIX, PairedIndexedDataset, stats_path
from megatron_reflect.errors import ConfigError, DataError

NO_PAD = -1  # never a token id: GPTDataset then pads short samples with it and masks them


@dataclass
class DataConfig:
    """Training data.  ``blend``: ``["prefix"]`` or ``["30", "prefixA", "70", "prefixB"]``."""

    blend: list[str] = field(default_factory=list)
    split: str = "98,2,0"
    seq_length: int = 128
    seed: int = 1234
    cache_dir: str | None = None
    eod_mask_loss: bool = False
    num_workers: int = 0


def read_dataset_info(prefix: str | Path) -> dict:
    """The stats JSON of a finished dataset (tokenizer description, template, counts)."""
    path = stats_path(_strip(prefix))
    if not path.is_file():
        raise DataError(f"{prefix}: no {path.name}; not a finished megatron_reflect dataset "
                        f"(run tools/preprocess_data.py)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed stats JSON ({e})") from None


def _strip(prefix: str | Path) -> str:
    """Accept Megatron's ``<prefix>_text_document`` spelling as well as ``<prefix>``."""
    p = str(prefix)
    return p[: -len(TOKENS_SUFFIX)] if p.endswith(TOKENS_SUFFIX) else p


class DatasetTokenizer:
    """The few tokenizer attributes GPTDataset reads (vocab size, EOD, pad, identity for the cache)."""

    def __init__(self, description: dict) -> None:
        self.vocab_size = int(description["vocab_size"])
        self.eod = int(description["eod_id"])
        self.pad = NO_PAD
        self.unique_identifiers = {k: description.get(k) for k in ("type", "model", "vocab_size", "eod_id")}


class _MetaView:
    """A PairedIndexedDataset seen through its metadata: ``get`` reads the uint8 twin."""

    def __init__(self, paired: PairedIndexedDataset) -> None:
        self.paired = paired

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        return self.paired.get_meta(idx, offset=offset, length=length)


class ReflectGPTDataset(GPTDataset):
    """GPTDataset whose samples also hold ``reflection_meta`` (uint8 [S], aligned with ``labels``)."""

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GPTDatasetConfig) -> PairedIndexedDataset:
        return PairedIndexedDataset(dataset_path, mmap=config.mmap_bin_files)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: PairedIndexedDataset) -> int:
        return low_level_dataset.sequence_lengths.shape[0]

    def _query_meta(self, idx: int) -> np.ndarray:
        tokens_view = self.dataset
        self.dataset = _MetaView(tokens_view)
        try:
            meta, _, lengths = self._query_document_sample_shuffle_indices(idx)
        finally:
            self.dataset = tokens_view
        meta[sum(lengths):] = 0  # padding of a short (last validation) sample is not a reflection
        return meta.astype(np.uint8)

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        meta = self._query_meta(0 if idx is None else idx)
        if self.config.add_extra_token_to_sequence:
            aligned = meta[1:]
        else:
            aligned = np.roll(meta, -1)
            aligned[-1] = 0
        sample["reflection_meta"] = torch.from_numpy(np.ascontiguousarray(aligned))
        if idx is None:
            sample["reflection_meta"].zero_()
        return sample


def _gpt_config(cfg: DataConfig, tokenizer: DatasetTokenizer) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=cfg.seed, sequence_length=cfg.seq_length,
        blend=get_blend_from_list([_strip(p) if not _is_number(p) else p for p in cfg.blend]),
        split=cfg.split, path_to_cache=cfg.cache_dir, tokenizer=tokenizer,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=bool(cfg.eod_mask_loss),
        create_attention_mask=False)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_reflect_datasets(cfg: DataConfig, sizes: tuple[int, int, int],
                           is_built_on_rank: Callable[[], bool] = lambda: True):
    """(train, valid, test) ReflectGPTDatasets (or BlendedDatasets of them) of ``sizes`` samples.

    Every blended dataset must come from the same tokenizer (checked on the stats JSONs).
    """
    prefixes = [p for p in cfg.blend if not _is_number(p)]
    if not prefixes:
        raise ConfigError("data.blend names no dataset prefix")
    infos = [read_dataset_info(p) for p in prefixes]
    described = [{k: i["tokenizer"][k] for k in ("vocab_size", "eod_id")} for i in infos]
    if any(d != described[0] for d in described):
        raise ConfigError(f"data.blend mixes datasets of different tokenizers: {described}")
    tokenizer = DatasetTokenizer(infos[0]["tokenizer"])
    builder = BlendedMegatronDatasetBuilder(ReflectGPTDataset, list(sizes), is_built_on_rank,
                                            _gpt_config(cfg, tokenizer))
    train, valid, test = builder.build()
    return train, valid, test
