"""Paired Megatron indexed datasets: tokens and one uint8 reflection code per token.

Files of a dataset with prefix ``P``:

* ``P_text_document.{bin,idx}``: tokens, in Megatron's optimal dtype for the vocabulary
  (uint16 below 65,500 ids, else int32): a stock Megatron dataset;
* ``P_reflect_meta.{bin,idx}``: uint8 codes (``megatron_reflect.reflection``), same sequence
  lengths and document structure, so any (document, offset, length) read of one is the same
  read of the other;
* ``P_stats.json``: counts, the tokenizer description and the reflection template.  It is
  written last: a prefix without it is incomplete and is refused by readers.

The ``.bin``/``.idx`` format is Megatron-Core's ``IndexedDataset`` format (a 9-byte
``MMIDIDX`` header, version 1, a dtype code, the sequence and document counts, then int32
sequence lengths, int64 byte pointers into ``.bin`` and int64 document indices).  It is
written and read here with numpy alone, so preprocessing never imports torch or
megatron.core (~5 s of start-up); ``tests/test_indexed.py`` checks the files byte for byte
against megatron-core's ``IndexedDatasetBuilder`` and reads them back with its
``IndexedDataset`` and ``GPTDataset``.

Everything is written under temporary names and renamed when complete.  Cost: one byte per
token on disk (+50 % over uint16 tokens); writing runs at hundreds of millions of tokens/s.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from megatron_reflect.errors import DataError
from megatron_reflect.files import write_json_atomic

TOKENS_SUFFIX = "_text_document"
META_SUFFIX = "_reflect_meta"
STATS_SUFFIX = "_stats.json"

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEAD = struct.Struct("<9sQBQQ")  # header, version, dtype code, sequence count, document count (34 bytes)
# Megatron-Core's DType codes
DTYPE_CODES: dict[np.dtype, int] = {np.dtype(t): c for t, c in (
    (np.uint8, 1), (np.int8, 2), (np.int16, 3), (np.int32, 4), (np.int64, 5), (np.float64, 6), (np.float32, 7),
    (np.uint16, 8))}
CODE_DTYPES: dict[int, np.dtype] = {c: t for t, c in DTYPE_CODES.items()}


def optimal_token_dtype(vocab_size: int | None) -> np.dtype:
    """Megatron's choice for token ids (``DType.optimal_dtype``): uint16 below 65,500, else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


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


def write_index(idx_path: str | Path, dtype: np.dtype, sequence_lengths: np.ndarray,
                document_indices: np.ndarray) -> None:
    """Write a Megatron ``.idx`` file for a ``.bin`` holding the sequences back to back."""
    dtype = np.dtype(dtype)
    lengths = np.ascontiguousarray(sequence_lengths, dtype="<i4")
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    docs = np.ascontiguousarray(document_indices, dtype="<i8")
    with open(idx_path, "wb") as fh:
        fh.write(_HEAD.pack(INDEX_HEADER, INDEX_VERSION, DTYPE_CODES[dtype], len(lengths), len(docs)))
        for arr in (lengths, pointers, docs):
            fh.write(memoryview(arr).cast("B"))


class IndexedWriter:
    """One ``.bin``/``.idx`` pair, one sequence per added document (Megatron's layout).

    ``add_documents`` appends many documents from one flat array and their lengths;
    ``add_index`` appends a finished dataset; ``finalize`` closes the ``.bin`` and writes the
    ``.idx``.  Values are cast to ``dtype`` as Megatron's builder casts them.
    """

    def __init__(self, bin_path: str | Path, dtype: np.dtype) -> None:
        self.bin_path = str(bin_path)
        self.dtype = np.dtype(dtype)
        self.file = open(self.bin_path, "wb")
        self._lengths: list[np.ndarray] = []
        self._docs: list[np.ndarray] = [np.zeros(1, np.int64)]
        self.sequences = 0

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        data = np.ascontiguousarray(flat, dtype=self.dtype)
        self.file.write(memoryview(data).cast("B"))
        lengths = np.asarray(lengths, dtype=np.int32)
        self._lengths.append(lengths)
        self._docs.append(np.arange(self.sequences + 1, self.sequences + len(lengths) + 1, dtype=np.int64))
        self.sequences += len(lengths)

    def add_index(self, path_prefix: str | Path) -> None:
        other = IndexedReader(path_prefix)
        if other.dtype != self.dtype:
            raise DataError(f"{path_prefix}: dtype {other.dtype} cannot be appended to a {self.dtype} dataset")
        self._lengths.append(np.array(other.sequence_lengths))
        self._docs.append(np.array(other.document_indices[1:]) + self.sequences)
        self.sequences += len(other)
        other.close()
        with open(f"{path_prefix}.bin", "rb") as src:
            shutil.copyfileobj(src, self.file, 16 << 20)

    def finalize(self, idx_path: str | Path) -> None:
        self.file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        write_index(idx_path, self.dtype, lengths, np.concatenate(self._docs))

    def close(self) -> None:
        self.file.close()


class IndexedReader:
    """A Megatron indexed dataset read with numpy (the part of ``IndexedDataset`` we use).

    ``get(idx, offset, length)`` and ``[idx]`` return the tokens of one sequence: read-only
    views into a memory map with ``mmap`` (the default), or fresh arrays read from the file.
    ``sequence_lengths`` (int32), ``sequence_pointers`` and ``document_indices`` (int64) are
    views into the memory-mapped index, as in Megatron.  The sizes are checked against the
    ``.bin`` length, so a truncated file is refused with its name.
    """

    def __init__(self, path_prefix: str | Path, mmap: bool = True) -> None:
        self.path_prefix = str(path_prefix)
        self.mmap = mmap
        idx_path, self.bin_path = self.path_prefix + ".idx", self.path_prefix + ".bin"
        for p in (idx_path, self.bin_path):
            if not os.path.isfile(p):
                raise DataError(f"{p}: no such file (an indexed dataset needs .bin and .idx)")
        with open(idx_path, "rb") as fh:
            head = fh.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise DataError(f"{idx_path}: truncated index ({len(head)} bytes)")
        magic, version, code, n_seq, n_doc = _HEAD.unpack(head)
        if magic != INDEX_HEADER or version != INDEX_VERSION or code not in CODE_DTYPES:
            raise DataError(f"{idx_path}: not a Megatron index (header {magic!r}, version {version}, dtype code {code})")
        self.dtype = CODE_DTYPES[code]
        expected = _HEAD.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
        if os.path.getsize(idx_path) < expected:
            raise DataError(f"{idx_path}: truncated index ({os.path.getsize(idx_path)} bytes, expected {expected})")
        self._idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        off = _HEAD.size
        self.sequence_lengths = np.frombuffer(self._idx, dtype="<i4", count=n_seq, offset=off).view(np.int32)
        self.sequence_pointers = np.frombuffer(self._idx, dtype="<i8", count=n_seq, offset=off + 4 * n_seq).view(np.int64)
        self.document_indices = np.frombuffer(self._idx, dtype="<i8", count=n_doc,
                                              offset=off + 12 * n_seq).view(np.int64)
        size = os.path.getsize(self.bin_path)
        end = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n_seq else 0
        if end != size or (n_doc and int(self.document_indices[-1]) != n_seq):
            raise DataError(f"{self.path_prefix}: index and data disagree ({end} bytes indexed, {size} in "
                            f"{self.bin_path}); the dataset is truncated or damaged")
        self._bin = np.memmap(self.bin_path, mode="r", dtype=np.uint8) if mmap and size else None

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        if length is None:
            length = int(self.sequence_lengths[idx]) - offset
        pointer = int(self.sequence_pointers[idx]) + offset * self.dtype.itemsize
        if self._bin is not None:
            return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=pointer)
        out = np.empty(length, dtype=self.dtype)
        with open(self.bin_path, "rb") as fh:
            fh.seek(pointer)
            fh.readinto(memoryview(out).cast("B"))
        return out

    def __getitem__(self, idx: int) -> np.ndarray:
        return self.get(idx)

    def close(self) -> None:
        self._bin = None
        self._idx = None  # type: ignore[assignment]


class PairedWriter:
    """Two indexed datasets written in lockstep under temporary names.

    ``add`` one document (tokens and metadata of equal length), ``add_batch`` many (flat
    arrays and lengths), or ``add_index`` a finished paired dataset; ``finalize(stats)``
    writes the indices, renames the four files into place and writes the stats JSON last.
    Any stale stats of ``prefix`` are removed first, so an interrupted run can never look
    complete.
    """

    def __init__(self, prefix: str | Path, vocab_size: int) -> None:
        self.prefix = str(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        stats_path(self.prefix).unlink(missing_ok=True)
        head, name = os.path.split(self.prefix)
        self.tmp_prefix = os.path.join(head, f".{name}.tmp-{os.getpid()}")
        self.token_dtype = optimal_token_dtype(vocab_size)
        self.tokens = IndexedWriter(tokens_prefix(self.tmp_prefix) + ".bin", self.token_dtype)
        self.meta = IndexedWriter(meta_prefix(self.tmp_prefix) + ".bin", np.dtype(np.uint8))
        self.documents = 0

    def add(self, tokens: np.ndarray, meta: np.ndarray) -> None:
        if len(tokens) != len(meta) or len(tokens) == 0:
            raise DataError(f"{self.prefix}: document with {len(tokens)} tokens and {len(meta)} metadata codes")
        self.add_batch(np.asarray(tokens), np.asarray(meta), np.array([len(tokens)]))

    def add_batch(self, tokens: np.ndarray, meta: np.ndarray, lengths: np.ndarray) -> None:
        if len(tokens) != len(meta) or len(tokens) != int(np.sum(lengths)) or np.any(np.asarray(lengths) <= 0):
            raise DataError(f"{self.prefix}: {len(tokens)} tokens, {len(meta)} metadata codes and document "
                            f"lengths summing to {int(np.sum(lengths))} (each must be > 0)")
        self.tokens.add_documents(tokens, lengths)
        self.meta.add_documents(meta, lengths)
        self.documents += len(lengths)

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
        self.tokens.close()
        self.meta.close()
        for path in dataset_files(self.tmp_prefix):
            path.unlink(missing_ok=True)


class ResumablePairedWriter:
    """A paired dataset appended in committed chunks, so that a killed job loses one chunk at most.

    While it is written, ``<prefix>.partial/`` holds ``tokens.bin``, ``meta.bin``,
    ``lengths.bin`` (int32 per document) and ``commit.json``: the byte sizes of the three
    files at the last ``commit(state)``, with the caller's ``state`` (reader position,
    counters) and ``key`` (the settings and input it was written for).  ``commit`` flushes
    and fsyncs the data before it renames the new ``commit.json`` into place, so a commit
    names only bytes that are on disk.  A new writer with the same key truncates whatever
    was appended after the last commit and continues (``state`` returns the committed
    state); a different key (other settings, a changed input file) or no ``resume`` starts over.  ``finalize`` writes the two ``.idx`` files,
    renames everything into place (stats last) and removes the directory.
    """

    FILES = ("tokens.bin", "meta.bin", "lengths.bin")

    def __init__(self, prefix: str | Path, vocab_size: int, key: dict, resume: bool = True) -> None:
        self.prefix = str(prefix)
        self.dir = Path(f"{self.prefix}.partial")
        self.token_dtype = optimal_token_dtype(vocab_size)
        self.key = json.loads(json.dumps(key, default=str))
        stats_path(self.prefix).unlink(missing_ok=True)
        committed = self._committed() if resume else None
        self.discarded = committed is not None and committed["key"] != self.key
        if self.discarded:  # other settings, or the input changed: its commits do not apply
            committed = None
        if committed is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            sizes = [0, 0, 0]
            self.state: dict | None = None
            self.committed_documents = 0
        else:
            sizes = committed["sizes"]
            self.state = committed["state"]
            self.committed_documents = committed["documents"]
        self.files = []
        for name, size in zip(self.FILES, sizes):
            path = self.dir / name
            if (path.stat().st_size if path.exists() else 0) < size:
                raise DataError(f"{path}: shorter than its last commit ({size} bytes); remove {self.dir}")
            fh = open(path, "r+b" if path.exists() else "w+b", buffering=0)  # batches are large: no buffer
            fh.truncate(size)  # drop what was appended after the last commit
            fh.seek(size)
            self.files.append(fh)
        self.documents = self.committed_documents
        self.commits = 0

    def _committed(self) -> dict | None:
        try:
            return json.loads((self.dir / "commit.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None  # nothing (or only a torn temporary) was committed

    def add(self, tokens: np.ndarray, meta: np.ndarray, lengths: np.ndarray) -> None:
        if len(tokens) != len(meta) or len(tokens) != int(np.sum(lengths)) or np.any(np.asarray(lengths) <= 0):
            raise DataError(f"{self.prefix}: {len(tokens)} tokens, {len(meta)} metadata codes and document "
                            f"lengths summing to {int(np.sum(lengths))} (each must be > 0)")
        for fh, arr in zip(self.files, (np.ascontiguousarray(tokens, self.token_dtype),
                                        np.ascontiguousarray(meta, np.uint8),
                                        np.ascontiguousarray(lengths, "<i4"))):
            view = memoryview(arr).cast("B")
            while view:
                view = view[fh.write(view):]
        self.documents += len(lengths)

    @property
    def uncommitted_documents(self) -> int:
        return self.documents - self.committed_documents

    def commit(self, state: dict) -> None:
        sizes = []
        for fh in self.files:
            os.fsync(fh.fileno())
            sizes.append(fh.tell())
        path = self.dir / "commit.json"
        tmp = path.with_name(f".commit.json.tmp-{os.getpid()}")
        with open(tmp, "w") as fh:
            json.dump({"key": self.key, "sizes": sizes, "documents": self.documents, "state": state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.state = state
        self.committed_documents = self.documents
        self.commits += 1

    def finalize(self, stats: dict) -> None:
        for fh in self.files:
            fh.close()
        lengths = np.fromfile(self.dir / "lengths.bin", dtype="<i4")
        docs = np.arange(len(lengths) + 1, dtype=np.int64)
        write_index(self.dir / "tokens.idx", self.token_dtype, lengths, docs)
        write_index(self.dir / "meta.idx", np.dtype(np.uint8), lengths, docs)
        final = dataset_files(self.prefix)
        for src, dst in zip(("tokens.bin", "tokens.idx", "meta.bin", "meta.idx"), final):
            os.replace(self.dir / src, dst)
        write_json_atomic(stats_path(self.prefix), stats)
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Stop writing and keep the directory: its last commit is where a rerun resumes."""
        for fh in self.files:
            fh.close()


def check_pair(prefix: str | Path, mmap: bool = True) -> tuple[IndexedReader, IndexedReader]:
    """Open both halves of a paired dataset and check they have the same structure."""
    missing = [str(p) for p in dataset_files(prefix) if not p.is_file()]
    if missing:
        raise DataError(f"{prefix}: not a paired reflection dataset (missing {', '.join(missing)})")
    tokens = IndexedReader(tokens_prefix(prefix), mmap=mmap)
    meta = IndexedReader(meta_prefix(prefix), mmap=mmap)
    if meta.dtype != np.uint8:
        raise DataError(f"{meta_prefix(prefix)}: metadata dtype is {meta.dtype}, expected uint8")
    if not (np.array_equal(tokens.sequence_lengths, meta.sequence_lengths)
            and np.array_equal(tokens.document_indices, meta.document_indices)):
        raise DataError(f"{prefix}: token and metadata datasets differ in sequence lengths or documents")
    return tokens, meta


class PairedIndexedDataset:
    """The low-level dataset of ``ReflectGPTDataset``: a token dataset plus its metadata twin.

    Exposes what GPTDataset reads (``sequence_lengths``, ``document_indices``, ``path_prefix``,
    ``get``) plus ``get_meta`` with the same arguments.  Pickles by path (dataloader workers).
    """

    def __init__(self, prefix: str | Path, mmap: bool = True) -> None:
        self.prefix = str(prefix)
        self.mmap = mmap
        self.tokens, self.meta = check_pair(self.prefix, mmap=mmap)

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
        """Copies of one document's tokens and metadata (safe to keep after this object is gone)."""
        return np.array(self.tokens[idx]), np.array(self.meta[idx])

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix, "mmap": self.mmap}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"], state["mmap"])
