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

Packing cuts documents at sample boundaries, so a sample may start in the middle of a
segment and then train that segment's reflection without the text it judges.  With
``DataConfig.mask_cut_reflections`` the loss mask is 0 on the reflection tokens of the
segment whose start lies before the sample (the first reflection of a sample that starts
mid-segment): every trained verdict then has its whole segment in view.  Cost: one extra
one-byte read for samples that start mid-document.  ``unanchored_verdicts`` counts, by an
independent walk back from each trained verdict, the verdicts that break this.
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
from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG

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
    mask_cut_reflections: bool = False  # no loss on a reflection whose segment starts before the sample
    reset_attention_mask: bool = False  # attention reset at every EOD: a document sees nothing before its start


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


@dataclass
class ReflectGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus the reflection-specific packing option."""

    mask_cut_reflections: bool = False


def _starts_segment(meta: np.ndarray, before_is_reflection: bool) -> bool:
    """Whether a sample whose first document part starts mid-document starts at a segment start:
    its first token is text and the token before the sample ended a reflection."""
    return before_is_reflection and (int(meta[0]) & KIND_MASK) == 0


def cut_reflection_mask(meta: np.ndarray, first_part: int, starts_segment: bool) -> np.ndarray:
    """Boolean mask over text positions: the reflection run (within the first ``first_part``
    positions) that belongs to a segment whose start is before the sample."""
    out = np.zeros(meta.shape[0], dtype=bool)
    if starts_segment:
        return out
    refl = (meta[:first_part].astype(np.int32) & KIND_MASK) != 0
    hits = np.flatnonzero(refl)
    if hits.size == 0:
        return out
    start = int(hits[0])
    end = start
    while end < first_part and refl[end]:
        end += 1
    out[start:end] = True
    return out


class ReflectGPTDataset(GPTDataset):
    """GPTDataset whose samples also hold ``reflection_meta`` (uint8 [S], aligned with ``labels``)."""

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GPTDatasetConfig) -> PairedIndexedDataset:
        return PairedIndexedDataset(dataset_path, mmap=config.mmap_bin_files)

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: PairedIndexedDataset) -> int:
        return low_level_dataset.sequence_lengths.shape[0]

    def _query_meta(self, idx: int) -> tuple[np.ndarray, list[int]]:
        tokens_view = self.dataset
        self.dataset = _MetaView(tokens_view)
        try:
            meta, _, lengths = self._query_document_sample_shuffle_indices(idx)
        finally:
            self.dataset = tokens_view
        meta[sum(lengths):] = 0  # padding of a short (last validation) sample is not a reflection
        return meta.astype(np.uint8), lengths

    def sample_start(self, idx: int) -> tuple[int, int]:
        """(document id, token offset) where sample ``idx`` starts."""
        row = self.sample_index[self.shuffle_index[idx]]
        return int(self.document_index[row[0]]), int(row[1])

    def starts_segment(self, idx: int, meta: np.ndarray) -> bool:
        """Whether sample ``idx`` (text-position ``meta``) starts at the start of a segment."""
        doc, offset = self.sample_start(idx)
        if offset == 0:
            return True
        before = self.dataset.get_meta(doc, offset=offset - 1, length=1)
        return _starts_segment(meta, (int(before[0]) & KIND_MASK) != 0)

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        i = 0 if idx is None else idx
        meta, lengths = self._query_meta(i)
        if getattr(self.config, "mask_cut_reflections", False):
            cut = cut_reflection_mask(meta, lengths[0], self.starts_segment(i, meta))
            label_cut = cut[1:] if self.config.add_extra_token_to_sequence else np.append(cut[1:], False)
            sample["loss_mask"][torch.from_numpy(label_cut[: sample["loss_mask"].shape[0]])] = 0.0
        if self.config.add_extra_token_to_sequence:
            aligned = meta[1:]
        else:
            aligned = np.roll(meta, -1)
            aligned[-1] = 0
        sample["reflection_meta"] = torch.from_numpy(np.ascontiguousarray(aligned))
        if idx is None:
            sample["reflection_meta"].zero_()
        return sample


def unanchored_verdicts(ds: ReflectGPTDataset, indices) -> int:
    """How many trained verdicts (loss mask > 0) among samples ``indices`` have their segment's
    start outside the sample.  Independent of the masking: from each verdict it walks back over
    its reflection and its text to the previous segment boundary (an EOD token or the end of an
    earlier reflection); a verdict whose walk reaches the sample's start is anchored only if the
    sample starts at a segment start.  Cost: one sample read and a few numpy passes per sample."""
    eod = ds.config.tokenizer.eod
    bad = 0
    for idx in indices:
        s = ds[idx]
        meta_lab = s["reflection_meta"].numpy().astype(np.int32)
        tokens = s["tokens"].numpy()
        trained = (s["loss_mask"].numpy() > 0) & ((meta_lab & VERDICT_FLAG) != 0)
        if not trained.any():
            continue
        # text positions 0..S: token p has the meta that labels[p - 1] carries
        n = tokens.shape[0] + 1
        text_meta = np.empty(n, dtype=np.int32)
        text_meta[1:] = meta_lab
        doc, offset = ds.sample_start(idx)  # the first token's meta: one value, not the sample's meta again
        text_meta[0] = ds.dataset.get_meta(doc, offset=offset, length=1)[0]
        refl = (text_meta & KIND_MASK) != 0
        boundary = np.zeros(n, dtype=bool)  # a segment starts at text position p
        boundary[1:] = (tokens == eod) | (refl[:-1] & ~refl[1:])
        boundary[0] = ds.starts_segment(idx, text_meta[:1])
        pos = np.arange(n)
        last = np.maximum.accumulate(np.where(boundary, pos, -1))  # latest boundary <= p
        run_begins = refl & ~np.concatenate([[False], refl[:-1]])
        run_start = np.maximum.accumulate(np.where(run_begins, pos, 0))  # start of p's reflection
        verdict_pos = np.flatnonzero(trained) + 1  # the verdict tokens' text positions
        bad += int(np.count_nonzero(last[run_start[verdict_pos]] < 0))
    return bad


def _gpt_config(cfg: DataConfig, tokenizer: DatasetTokenizer) -> ReflectGPTDatasetConfig:
    return ReflectGPTDatasetConfig(
        random_seed=cfg.seed, sequence_length=cfg.seq_length,
        blend=get_blend_from_list([_strip(p) if not _is_number(p) else p for p in cfg.blend]),
        split=cfg.split, path_to_cache=cfg.cache_dir, tokenizer=tokenizer,
        reset_position_ids=False, reset_attention_mask=bool(cfg.reset_attention_mask),
        eod_mask_loss=bool(cfg.eod_mask_loss), create_attention_mask=bool(cfg.reset_attention_mask),
        mask_cut_reflections=bool(cfg.mask_cut_reflections))


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
