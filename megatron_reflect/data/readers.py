"""Streamed corpus readers: jsonl (plain, .gz, .zst) and parquet -> ``Document`` or ``Skipped``.

WHY: a pretraining corpus is too big to hold in memory and always has some broken
records.  Readers stream one record at a time and never raise on a bad record: a
malformed JSON line, a missing or non-string key, empty text, invalid UTF-8 or a
gigantic document becomes ``Skipped(source, line, reason)`` so the caller can count it
(or, in strict mode, turn it into a ``DataError`` with :meth:`Skipped.error`).
Cost: one decode of each line; memory is one record (one parquet batch).

``iter_positioned`` also yields the ``ReadPosition`` after each record, and can start
from one: a resumed job continues exactly where its last committed chunk ended (a seek
in a plain jsonl file; compressed streams and parquet are skipped through without
parsing the records).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple, Sequence

from megatron_reflect.data.types import Document
from megatron_reflect.errors import DataError

# A document larger than this (characters) is skipped: it would dominate a shard and
# is almost always a dump, not prose.  Callers can raise it.
DEFAULT_MAX_CHARS = 5_000_000
PARQUET_BATCH_ROWS = 1024
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")


@dataclass(frozen=True)
class Skipped:
    """A record that was not read, located by file and 1-based line (row for parquet)."""

    source: str
    line: int
    reason: str

    def error(self) -> DataError:
        return DataError(f"{self.source}:{self.line}: {self.reason}")


class ReadPosition(NamedTuple):
    """Where a reader stands after a record: ``records`` read so far (documents and skipped
    ones), the 1-based ``line`` (parquet: row) of the last one, and ``offset``: bytes of the
    (decompressed) jsonl stream, or parquet rows, consumed."""

    records: int = 0
    line: int = 0
    offset: int = 0


START = ReadPosition()


def _skip_bytes(fh: BinaryIO, n: int, path: Path) -> None:
    if n <= 0:
        return
    if fh.seekable():
        fh.seek(n)
        return
    while n > 0:
        got = len(fh.read(min(n, 16 << 20)))
        if got == 0:
            raise DataError(f"{path}: shorter than the resume position ({n} bytes missing); the file changed")
        n -= got


def _open_binary(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))  # type: ignore[arg-type]
    return open(path, "rb")


def _document(record: Any, source: str, name: str, line: int, json_keys: Sequence[str], id_key: str,
              max_chars: int) -> Document | Skipped:
    if not isinstance(record, dict):
        return Skipped(source, line, f"record is a JSON {type(record).__name__}, not an object")
    texts = []
    for key in json_keys:
        value = record.get(key)
        if value is None:
            return Skipped(source, line, f"missing key '{key}'")
        if not isinstance(value, str):
            return Skipped(source, line, f"key '{key}' is a {type(value).__name__}, not a string")
        texts.append(value)
    text = "\n\n".join(texts)
    if not text.strip():
        return Skipped(source, line, "empty text")
    if len(text) > max_chars:
        return Skipped(source, line, f"document of {len(text)} characters exceeds the limit of {max_chars}")
    raw_id = record.get(id_key)
    doc_id = str(raw_id) if raw_id is not None else f"{name}:{line}"
    fields = {k: v for k, v in record.items() if k not in json_keys}
    return Document(doc_id=doc_id, text=text, source=source, line=line, fields=fields)


def _jsonl_records(path: Path, max_chars: int, start: ReadPosition) -> Iterator[tuple[Any, ReadPosition]]:
    source = str(path)
    # A line of more than 4 bytes per allowed character cannot be within the limit:
    # reject it before decoding.
    max_bytes = 4 * max_chars + 1024
    records, offset = start.records, start.offset
    with _open_binary(path) as fh:
        _skip_bytes(fh, offset, path)
        for line_no, raw in enumerate(fh, start=start.line + 1):
            offset += len(raw)
            pos = ReadPosition(records + 1, line_no, offset)
            if len(raw) > max_bytes:
                records += 1
                yield Skipped(source, line_no, f"line of {len(raw)} bytes exceeds the document limit "
                                               f"of {max_chars} characters"), pos
                continue
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                records += 1
                yield Skipped(source, line_no, f"invalid UTF-8 at byte {e.start}"), pos
                continue
            if not decoded.strip():
                continue  # blank line: not a record
            records += 1
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError as e:
                record = Skipped(source, line_no, f"malformed JSON: {e.msg} at column {e.colno}")
            yield record, pos


def _parquet_records(path: Path, start: ReadPosition, check_columns: Callable[[list[str]], str | None]
                     ) -> Iterator[tuple[Any, ReadPosition]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({e})") from e
    problem = check_columns(pf.schema_arrow.names)
    if problem:
        raise DataError(f"{path}: parquet file has {problem} (columns: {pf.schema_arrow.names})")
    row, records = 0, start.records
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        if row + batch.num_rows <= start.offset:  # before the resume position: not decoded
            row += batch.num_rows
            continue
        first = max(0, start.offset - row)
        row += first
        for record in batch.slice(first).to_pylist():
            row += 1
            records += 1
            yield record, ReadPosition(records, row, row)


def iter_raw(path: str | Path, max_chars: int = DEFAULT_MAX_CHARS, start: ReadPosition = START,
             check_columns: Callable[[list[str]], str | None] = lambda names: None, what: str = "corpus file"
             ) -> Iterator[tuple[Any, ReadPosition]]:
    """Decoded records of a jsonl (plain, .gz, .zst) or parquet file with the position after each,
    from ``start``: a record that cannot be decoded comes as ``Skipped``; its line is ``position.line``.
    ``check_columns`` gets a parquet file's column names and returns what is wrong with them, or None.
    The one streaming loop under corpus documents (``iter_positioned``) and chat records (``posttrain/chat``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what}")
    name = path.name
    if name.endswith(".parquet"):
        return _parquet_records(path, start, check_columns)
    if name.endswith(JSONL_SUFFIXES):
        return _jsonl_records(path, max_chars, start)
    raise DataError(f"{path}: unknown {what} format (expected .jsonl, .jsonl.gz, .jsonl.zst or .parquet)")


def iter_positioned(path: str | Path, json_keys: Sequence[str] = ("text",), id_key: str = "id",
                    max_chars: int = DEFAULT_MAX_CHARS, start: ReadPosition = START
                    ) -> Iterator[tuple[Document | Skipped, ReadPosition]]:
    """``iter_records`` with the position after each record, starting after ``start``."""
    path = Path(path)

    def missing(names: list[str]) -> str | None:
        gone = [k for k in json_keys if k not in names]
        return f"no column {gone}" if gone else None

    source, name = str(path), path.name
    return ((rec if isinstance(rec, Skipped) else _document(rec, source, name, pos.line, json_keys, id_key, max_chars),
             pos) for rec, pos in iter_raw(path, max_chars, start, missing, what="corpus file"))


def iter_records(path: str | Path, json_keys: Sequence[str] = ("text",), id_key: str = "id",
                 max_chars: int = DEFAULT_MAX_CHARS) -> Iterator[Document | Skipped]:
    """Stream the records of one corpus file as ``Document`` or ``Skipped``, in file order.

    ``doc_id`` is ``record[id_key]`` when present, else ``"<file name>:<line>"``.  Several
    ``json_keys`` are joined with a blank line into one text.  Raises ``DataError`` only
    for a file that cannot be read at all (missing, unknown format, parquet without the key).
    """
    return (rec for rec, _ in iter_positioned(path, json_keys, id_key, max_chars))
