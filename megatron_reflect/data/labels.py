"""The label store: one parquet file of segment labels per input file, apart from rendering.

WHY: labelling (a guard model over billions of tokens) is the expensive step; storing
labels lets rendering be re-run with another template or mode for free, and the
one-input-file -> one-label-file contract lets many machines share the work (a SLURM
array task or a Ray Data task per file; see docs/LABELING_AT_SCALE.md).

Layout of ``<labels_dir>/<input name>.labels.parquet``: one row per segment with
``doc_id, seg_index, start, end, text_hash, verdict, category, score``; the schema
metadata records the labeler and segmenter settings.  ``text_hash`` lets a reader check
that its segmentation still matches the labels.

Resumability: ``label_file`` writes finished documents in parts
(``<output>.parts/part-NNNNN.parquet``, each written atomically); a killed run restarts,
reads the parts, skips the documents they hold, and at the end merges all parts into
the output (tmp + rename) and deletes them.  Cost: one small parquet write per
``part_segments`` labels; memory is one part.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from megatron_reflect.data.readers import DEFAULT_MAX_CHARS, Skipped, iter_records
from megatron_reflect.data.segment import SegmenterConfig, segment_document
from megatron_reflect.data.types import Document, Label, Labeler, Segment
from megatron_reflect.errors import DataError
from megatron_reflect.reflection import Verdict

LABELS_SUFFIX = ".labels.parquet"
PART_SEGMENTS = 20_000
MAX_LISTED_SKIPS = 1000


def labels_path_for(input_path: str | Path, labels_dir: str | Path) -> Path:
    return Path(labels_dir) / f"{Path(input_path).name}{LABELS_SUFFIX}"


def text_hash(text: str) -> str:
    """16 hex characters of BLAKE2b over the UTF-8 text (the segment identity in caches)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _schema(metadata: dict[str, str] | None = None):
    import pyarrow as pa

    return pa.schema([("doc_id", pa.string()), ("seg_index", pa.int32()), ("start", pa.int64()),
                      ("end", pa.int64()), ("text_hash", pa.string()), ("verdict", pa.string()),
                      ("category", pa.string()), ("score", pa.float32())],
                     metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()})


def _table(rows: Iterable[tuple[Segment, Label]], metadata: dict[str, str] | None = None):
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in ("doc_id", "seg_index", "start", "end", "text_hash", "verdict",
                                             "category", "score")}
    for seg, label in rows:
        cols["doc_id"].append(seg.doc_id)
        cols["seg_index"].append(seg.index)
        cols["start"].append(seg.start)
        cols["end"].append(seg.end)
        cols["text_hash"].append(text_hash(seg.text))
        cols["verdict"].append(label.verdict.value)
        cols["category"].append(label.category)
        cols["score"].append(label.score)
    return pa.table(cols, schema=_schema(metadata))


def _write_table_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_labels(path: str | Path, rows: Iterable[tuple[Segment, Label]],
                 metadata: dict[str, str] | None = None) -> None:
    """Write a label file atomically (a temporary file renamed into place)."""
    _write_table_atomic(_table(rows, metadata), Path(path))


def read_labels(path: str | Path) -> dict[tuple[str, int], tuple[str, Label]]:
    """``(doc_id, seg_index) -> (text_hash, Label)`` for every row of a label file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable label file ({e})") from e
    missing = set(_schema().names) - set(table.column_names)
    if missing:
        raise DataError(f"{path}: label file lacks columns {sorted(missing)}")
    out: dict[tuple[str, int], tuple[str, Label]] = {}
    d = table.to_pydict()
    for i, (doc_id, idx, h, v, c, s) in enumerate(zip(d["doc_id"], d["seg_index"], d["text_hash"], d["verdict"],
                                                       d["category"], d["score"])):
        try:
            verdict = Verdict.parse(v)
        except ValueError as e:
            raise DataError(f"{path}: row {i}: {e}") from e
        out[(doc_id, idx)] = (h, Label(verdict, c, s))
    return out


def read_label_metadata(path: str | Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


def skip_kind(reason: str) -> str:
    """The stable part of a skip reason (for counting): text before ':' with numbers as N."""
    return re.sub(r"\d+", "N", reason.split(":")[0])


def _note_skip(item: Skipped, listed: list[Skipped], counts: Counter[str]) -> None:
    counts[skip_kind(item.reason)] += 1
    if len(listed) < MAX_LISTED_SKIPS:
        listed.append(item)


def _done_doc_ids(parts_dir: Path, metadata: dict[str, str]) -> tuple[set[str], int]:
    """Document ids already in the parts of a killed run (which must share our settings)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    rows = 0
    for part in sorted(parts_dir.glob("part-*.parquet")):
        if read_label_metadata(part) != metadata:
            raise DataError(f"{part}: left by a run with other settings ({read_label_metadata(part)}); "
                            f"delete {parts_dir} or rerun without resume")
        col = pq.read_table(part, columns=["doc_id"]).column("doc_id").to_pylist()
        done.update(col)
        rows += len(col)
    return done, rows


def _merge_parts(parts: list[Path], output_path: Path, metadata: dict[str, str]) -> int:
    """Stream the parts into ``output_path`` (tmp + rename); return the number of rows."""
    import pyarrow.parquet as pq

    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    rows = 0
    with pq.ParquetWriter(tmp, _schema(metadata)) as writer:
        for part in parts:
            table = pq.read_table(part).replace_schema_metadata(_schema(metadata).metadata)
            writer.write_table(table)
            rows += table.num_rows
    os.replace(tmp, output_path)
    return rows


def label_file(input_path: str | Path, output_path: str | Path, labeler: Labeler, seg_cfg: SegmenterConfig,
               json_keys: Sequence[str] = ("text",), batch_size: int = 64, resume: bool = True, *,
               id_key: str = "id", max_chars: int = DEFAULT_MAX_CHARS, strict: bool = False,
               part_segments: int = PART_SEGMENTS, progress: Any = None) -> dict:
    """Label every segment of one input file into ``output_path``; return stats.

    ``resume``: an existing complete output is kept as is; parts of a killed run are
    reused and their documents not labelled again.  ``strict``: a bad record raises
    ``DataError`` instead of being skipped.  Duplicate document ids are skipped (labels
    are keyed by id).  ``progress``: an optional tqdm-like object whose ``update(n)`` is
    called with the number of records read.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    metadata = {"labeler": labeler.name, "segmenter": json.dumps(asdict(seg_cfg)), "json_keys": json.dumps(list(json_keys)),
                "input": input_path.name}
    if resume and output_path.is_file():
        return {"input": str(input_path), "output": str(output_path), "status": "already complete"}
    parts_dir = output_path.with_name(output_path.name + ".parts")
    if not resume and parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    done, resumed_rows = _done_doc_ids(parts_dir, metadata)
    n_parts = len(list(parts_dir.glob("part-*.parquet")))

    t0 = time.perf_counter()
    seen: set[str] = set()
    skipped: list[Skipped] = []  # the first MAX_LISTED_SKIPS, for the stats
    skip_counts: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    n_docs = n_new_docs = n_new_segments = 0
    pending_docs: dict[str, Document] = {}
    pending_segs: list[Segment] = []
    part_rows: list[tuple[Segment, Label]] = []

    def flush_batch() -> None:
        nonlocal pending_segs, pending_docs, n_new_segments
        for i in range(0, len(pending_segs), batch_size):
            chunk = pending_segs[i:i + batch_size]
            labels = labeler.label(chunk, pending_docs)
            if len(labels) != len(chunk):
                raise DataError(f"labeler {labeler.name} returned {len(labels)} labels for {len(chunk)} segments")
            part_rows.extend(zip(chunk, labels))
            verdicts.update(label.verdict.value for label in labels)
        n_new_segments += len(pending_segs)
        pending_segs, pending_docs = [], {}

    def flush_part() -> None:
        nonlocal part_rows, n_parts
        if part_rows:
            _write_table_atomic(_table(part_rows, metadata), parts_dir / f"part-{n_parts:05d}.parquet")
            n_parts += 1
            part_rows = []

    for item in iter_records(input_path, json_keys, id_key, max_chars):
        if progress is not None:
            progress.update(1)
        if isinstance(item, Skipped):
            if strict:
                raise item.error()
            _note_skip(item, skipped, skip_counts)
            continue
        if item.doc_id in seen:
            dup = Skipped(item.source, item.line, f"duplicate document id: '{item.doc_id}'")
            if strict:
                raise dup.error()
            _note_skip(dup, skipped, skip_counts)
            continue
        seen.add(item.doc_id)
        n_docs += 1
        if item.doc_id in done:
            continue
        n_new_docs += 1
        pending_docs[item.doc_id] = item
        pending_segs.extend(segment_document(item, seg_cfg))
        if len(pending_segs) >= batch_size:
            flush_batch()
            if len(part_rows) >= part_segments:
                flush_part()
    flush_batch()
    flush_part()

    n_rows = _merge_parts(sorted(parts_dir.glob("part-*.parquet")), output_path, metadata)
    shutil.rmtree(parts_dir)
    seconds = time.perf_counter() - t0
    return {
        "input": str(input_path), "output": str(output_path), "status": "labelled",
        "labeler": labeler.name, "documents": n_docs, "documents_labelled_now": n_new_docs,
        "documents_resumed": n_docs - n_new_docs, "segments": n_rows,
        "segments_labelled_now": n_new_segments, "segments_resumed": resumed_rows,
        "verdicts_labelled_now": dict(sorted(verdicts.items())),
        "skipped": sum(skip_counts.values()),
        "skipped_by_reason": dict(skip_counts.most_common()),
        "skipped_records": [asdict(s) for s in skipped],
        "labeler_stats": dict(getattr(labeler, "stats", {}) or {}),
        "seconds": round(seconds, 3),
        "segments_per_s": round(n_new_segments / seconds, 1) if seconds > 0 else None,
    }
