"""Paired Megatron indexed datasets: tokens and one uint8 reflection code per token.

Files of a dataset with prefix ``P``:

* ``P_text_document.{bin,idx}``: tokens, in ``DType.optimal_dtype(vocab)`` (a stock Megatron dataset);
* ``P_reflect_meta.{bin,idx}``: uint8 codes (``megatron_reflect.reflection``), same sequence
  lengths and document structure, so any (document, offset, length) read of one is the same
  read of the other;
* ``P_stats.json``: counts, the tokenizer description and the reflection template.  It is
  written last: a prefix without it is incomplete and is refused by readers.

Everything is written under temporary names and renamed when complete.  Cost: one byte per
token on disk (+50 % over uint16 tokens); writing runs at tens of millions of tokens/s, far
above tokenization.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megatron_reflect.errors import DataError

TOKENS_SUFFIX = "_text_document"
META_SUFFIX = "_reflect_meta"
STATS_SUFFIX = "_stats.json"


def tokens_prefix(prefix: str | Path) -> str:
    return f"{prefix}{TOKENS_SUFFIX}"


def meta_prefix(prefix: str | Path) -> str:
    return f"{prefix}{META_SUFFIX}"


def stats_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}{STATS_SUFFIX}")


def dataset_files(prefix: str | Path) -> list[Path]:
    return [Path(p + ext) for p in (tokens_prefix(prefix), meta_prefix(prefix)) for ext in (".bin", ".idx")]


def is_complete(prefix: str | Path) -> bool:
    return stats_path(prefix).is_file() and all(p.is_file() for p in dataset_files(prefix))


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str))
    os.replace(tmp, path)


class PairedWriter:
    """Two ``IndexedDatasetBuilder`` written in lockstep under temporary names.

    ``add`` one document (tokens and metadata of equal length), or ``add_index`` a finished
    paired dataset; ``finalize(stats)`` writes the indices, renames the four files into place
    and writes the stats JSON last.  Any stale stats of ``prefix`` are removed first, so an
    interrupted run can never look complete.
    """

    def __init__(self, prefix: str | Path, vocab_size: int) -> None:
        self.prefix = str(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        stats_path(self.prefix).unlink(missing_ok=True)
        head, name = os.path.split(self.prefix)
        self.tmp_prefix = os.path.join(head, f".{name}.tmp-{os.getpid()}")
        self.token_dtype = DType.optimal_dtype(vocab_size)
        self.tokens = IndexedDatasetBuilder(tokens_prefix(self.tmp_prefix) + ".bin", dtype=self.token_dtype)
        self.meta = IndexedDatasetBuilder(meta_prefix(self.tmp_prefix) + ".bin", dtype=np.uint8)
        self.documents = 0

    def add(self, tokens: np.ndarray, meta: np.ndarray) -> None:
        if len(tokens) != len(meta) or len(tokens) == 0:
            raise DataError(f"{self.prefix}: document with {len(tokens)} tokens and {len(meta)} metadata codes")
        self.tokens.add_document(np.asarray(tokens), [len(tokens)])  # the builder casts to its dtype
        self.meta.add_document(np.asarray(meta, dtype=np.uint8), [len(meta)])
        self.documents += 1

    def add_index(self, prefix: str | Path) -> None:
        check_pair(prefix)
        self.tokens.add_index(tokens_prefix(prefix))
        self.meta.add_index(meta_prefix(prefix))

    def finalize(self, stats: dict) -> None:
        self.tokens.finalize(tokens_prefix(self.tmp_prefix) + ".idx")
        self.meta.finalize(meta_prefix(self.tmp_prefix) + ".idx")
        for src, dst in zip(dataset_files(self.tmp_prefix), dataset_files(self.prefix)):
            os.replace(src, dst)
        write_json_atomic(stats_path(self.prefix), stats)

    def abort(self) -> None:
        for path in dataset_files(self.tmp_prefix):
            path.unlink(missing_ok=True)


def check_pair(prefix: str | Path) -> tuple[IndexedDataset, IndexedDataset]:
    """Open both halves of a paired dataset and check they have the same structure."""
    missing = [str(p) for p in dataset_files(prefix) if not p.is_file()]
    if missing:
        raise DataError(f"{prefix}: not a paired reflection dataset (missing {', '.join(missing)})")
    tokens = IndexedDataset(tokens_prefix(prefix))
    meta = IndexedDataset(meta_prefix(prefix))
    if meta.index.dtype != np.uint8:
        raise DataError(f"{meta_prefix(prefix)}: metadata dtype is {meta.index.dtype}, expected uint8")
    if not (np.array_equal(tokens.sequence_lengths, meta.sequence_lengths)
            and np.array_equal(tokens.document_indices, meta.document_indices)):
        raise DataError(f"{prefix}: token and metadata datasets differ in sequence lengths or documents")
    return tokens, meta


class PairedIndexedDataset:
    """The low-level dataset of ``ReflectGPTDataset``: a token IndexedDataset plus its metadata twin.

    Exposes what GPTDataset reads (``sequence_lengths``, ``document_indices``, ``path_prefix``,
    ``get``) plus ``get_meta`` with the same arguments.  Pickles by path (dataloader workers).
    """

    def __init__(self, prefix: str | Path, mmap: bool = True) -> None:
        self.prefix = str(prefix)
        self.mmap = mmap
        check_pair(self.prefix)
        self.tokens = IndexedDataset(tokens_prefix(self.prefix), mmap=mmap)
        self.meta = IndexedDataset(meta_prefix(self.prefix), mmap=mmap)

    @property
    def path_prefix(self) -> str:
        return self.prefix

    @property
    def sequence_lengths(self) -> np.ndarray:
        return self.tokens.sequence_lengths

    @property
    def document_indices(self) -> np.ndarray:
        return self.tokens.document_indices

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        return self.tokens.get(idx, offset=offset, length=length)

    def get_meta(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        return self.meta.get(idx, offset=offset, length=length)

    def document(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of one document's tokens and metadata (safe to keep after this object is gone:
        IndexedDataset returns views into a memory map that it closes when collected)."""
        return np.array(self.tokens[idx]), np.array(self.meta[idx])

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix, "mmap": self.mmap}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"], state["mmap"])
