"""Corpus files -> a paired (tokens + reflection metadata) Megatron dataset, with stats.

Pipeline per batch of documents: read -> segment -> label (a labeler) -> render (mode) ->
tokenize the pieces (+ EOD) -> flat numpy arrays.  With labels stored by
``tools/label_corpus.py`` (``labels_dir``) the segments are the stored spans, each checked
against its text hash (a changed document is skipped), so rendering again costs no
segmentation and no labelling.

Parallelism: where the per-document work is cheap (plain mode, stored labels, the oracle
labeler) one process does it and the tokenizer encodes each batch on ``workers`` Rust
threads, in a background thread while the main thread reads, parses and writes (nothing
is pickled between processes).  Where an in-line labeler or rewriter does real work in
Python, ``workers`` forked processes run the whole pipeline on batches instead.  Both
give the same bytes.

Shards and chunks: each input file, split into ``partitions`` parts (record ``i`` goes to
part ``i mod N``), is one shard written to ``<prefix>.shards/`` and merged into
``<prefix>``.  A shard is appended in chunks of about ``chunk_tokens`` tokens; after each
chunk the data and the reader's position are committed (``ResumablePairedWriter``), so a
job killed at any point (SIGKILL, OOM killer, preemption) and rerun with ``resume`` loses
at most the chunk it was writing: finished shards are kept, and a partial one continues
from its last commit (a seek into a plain jsonl file).  A bad record is skipped and listed
(file, line, reason) in the stats, or raises with ``strict``; nothing is renamed into
place before it is complete.  Cost: dominated by tokenization (and by the labeler when
labels are not stored).

Test hook (documented so that kill tests are deterministic, not timing-dependent): with
``MEGATRON_REFLECT_PAUSE_AFTER_CHUNKS=K`` in the environment, the job prints a line to
stderr and sleeps once it has committed K chunks and written, uncommitted, part of the next.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from megatron_reflect.data.indexed import (PairedWriter, ResumablePairedWriter, dataset_files, is_complete,
                                           stats_path)
from megatron_reflect.data.readers import START, ReadPosition
from megatron_reflect.data.render import MODES, build_rewriter, render
from megatron_reflect.data.tokenizers import Tokenizer, build_tokenizer, configure_threads
from megatron_reflect.data.types import Document, Label, Piece, Segment
from megatron_reflect.errors import ConfigError, DataError, ReflectError
from megatron_reflect.files import write_json_atomic
from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG, ReflectionTemplate, Verdict

MAX_LISTED_SKIPS = 1000
PAUSE_ENV = "MEGATRON_REFLECT_PAUSE_AFTER_CHUNKS"


@dataclass
class PreprocessConfig:
    """Everything ``preprocess`` needs; ``tools/preprocess_data.py`` fills it from its flags."""

    input: list[str]
    output_prefix: str
    json_keys: tuple[str, ...] = ("text",)
    id_key: str = "id"
    tokenizer_type: str = "hf"
    tokenizer_model: str | None = None
    append_eod: bool = True
    mode: str = "reflect"
    labeler: str = "classifier"
    labeler_options: dict = field(default_factory=dict)
    labels_dir: str | None = None
    segment_words: int = 100
    template: ReflectionTemplate = field(default_factory=ReflectionTemplate)
    filter_max_flagged: int = 0
    filter_min_score: float | None = None
    rewriter: str = "exact"
    rewriter_options: dict = field(default_factory=dict)
    workers: int = 1
    partitions: int = 1
    batch_docs: int = 64
    chunk_tokens: int = 4_000_000
    max_chars: int | None = None
    strict: bool = False
    resume: bool = False
    progress: bool = True

    def fingerprint(self) -> dict:
        """The settings that change the output (a resumed run must use the same), as stored in JSON."""
        return json.loads(json.dumps({"json_keys": list(self.json_keys), "tokenizer_type": self.tokenizer_type,
                "tokenizer_model": self.tokenizer_model, "append_eod": self.append_eod, "mode": self.mode,
                "labeler": None if self.mode == "plain" else (f"stored:{self.labels_dir}" if self.labels_dir
                                                              else self.labeler),
                "segment_words": self.segment_words, "template": dataclasses.asdict(self.template),
                "filter_max_flagged": self.filter_max_flagged, "filter_min_score": self.filter_min_score,
                "rewriter": self.rewriter if self.mode == "rewrite" else None,
                "partitions": self.partitions}))

    def in_line_work(self) -> bool:
        """Whether documents need real per-document Python work (a labeler or an endpoint rewriter)."""
        if self.mode == "plain":
            return False
        labelling = not self.labels_dir and self.labeler != "oracle"
        return labelling or (self.mode == "rewrite" and self.rewriter != "exact")


StoredLabels = list[tuple[int, int, str, Label]]  # per segment index: (start, end, text hash, label)
Skip = tuple[str, int, str]  # (source, line, reason)


@dataclass
class Batch:
    """Documents read together, the records skipped while reading them, and where reading stopped."""

    items: list[tuple[Document, StoredLabels | None]]
    skipped: list[Skip]
    position: ReadPosition
    records: int


@dataclass
class BatchResult:
    """What the pipeline makes of one batch: the written documents as flat arrays, and counts."""

    tokens: np.ndarray
    meta: np.ndarray
    lengths: np.ndarray
    verdicts: Counter = field(default_factory=Counter)
    dropped: int = 0
    skipped: list[Skip] = field(default_factory=list)


@dataclass
class Prepared:
    """A batch after rendering: the pieces of each document to write, and what was skipped or dropped."""

    result: BatchResult
    rendered: list[list[Piece]] = field(default_factory=list)
    written: list[tuple[Document, list[Label]]] = field(default_factory=list)


class Worker:
    """The per-batch pipeline; one per process (built once, reused for every batch):
    ``prepare`` (segment, label, render) then ``encode`` (tokenize)."""

    def __init__(self, cfg: PreprocessConfig, tokenizer: Tokenizer | None = None) -> None:
        from megatron_reflect.data.segment import SegmenterConfig

        self.cfg = cfg
        self.tokenizer = tokenizer or build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.template)
        self.seg_cfg = SegmenterConfig(max_words=cfg.segment_words)
        self.labeler = None
        if cfg.mode != "plain" and not cfg.labels_dir:
            from megatron_reflect.data.labelers import build_labeler

            self.labeler = build_labeler(cfg.labeler, **cfg.labeler_options)
        self.rewriter = build_rewriter(cfg.rewriter, **cfg.rewriter_options) if cfg.mode == "rewrite" else None

    def _segments(self, doc: Document) -> list[Segment]:
        from megatron_reflect.data.segment import segment_document

        return segment_document(doc, self.seg_cfg)

    @staticmethod
    def _stored(doc: Document, rows: StoredLabels | None) -> tuple[list[Segment], list[Label], str | None]:
        """The segments the stored labels were computed on (their spans), checked by text hash."""
        from megatron_reflect.data.labels import text_hash

        if rows is None:
            return [], [], "no stored labels for this document"
        text, doc_id = doc.text, doc.doc_id
        segs = [Segment(doc_id, i, a, b, text[a:b]) for i, (a, b, _, _) in enumerate(rows)]
        if rows[-1][1] != len(text) or any(h != text_hash(s.text) for (_, _, h, _), s in zip(rows, segs)):
            return segs, [], "stored labels do not match the text (segment hashes differ)"
        return segs, [label for _, _, _, label in rows], None

    def _labels(self, docs: list[Document], segs: list[list[Segment]], why: list[str | None]) -> list[list[Label]]:
        labels: list[list[Label]] = [[] for _ in docs]
        assert self.labeler is not None
        documents = {d.doc_id: d for d in docs}
        try:
            flat = self.labeler.label([s for doc_segs in segs for s in doc_segs], documents)
            pos = 0
            for i, doc_segs in enumerate(segs):
                labels[i] = list(flat[pos:pos + len(doc_segs)])
                pos += len(doc_segs)
            return labels
        except ReflectError:
            pass  # find the documents that fail, one at a time
        for i, (doc, doc_segs) in enumerate(zip(docs, segs)):
            try:
                labels[i] = list(self.labeler.label(doc_segs, {doc.doc_id: doc}))
            except ReflectError as e:
                why[i] = f"labeler {self.cfg.labeler!r} failed: {e}"
        return labels

    def prepare(self, items: list[tuple[Document, StoredLabels | None]]) -> Prepared:
        """Segment, label and render a batch (Python work; the tokenizer is not called)."""
        docs = [d for d, _ in items]
        why: list[str | None] = [None] * len(docs)  # the reason a document is skipped
        cfg = self.cfg
        segs: list[list[Segment]] = [[] for _ in docs]
        labels: list[list[Label]] = [[] for _ in docs]
        if cfg.mode != "plain" and cfg.labels_dir:
            for i, (doc, rows) in enumerate(items):
                segs[i], labels[i], why[i] = self._stored(doc, rows)
        elif cfg.mode != "plain":
            for i, doc in enumerate(docs):
                try:
                    segs[i] = self._segments(doc)
                except ReflectError as e:
                    why[i] = f"segmenter: {e}"
            live = [i for i in range(len(docs)) if why[i] is None]
            live_why: list[str | None] = [None] * len(live)
            got = self._labels([docs[i] for i in live], [segs[i] for i in live], live_why)
            for j, i in enumerate(live):
                labels[i], why[i] = got[j], live_why[j]
        out = Prepared(BatchResult(np.zeros(0), np.zeros(0, np.uint8), np.zeros(0, np.int64)))
        for i, doc in enumerate(docs):
            if why[i] is not None:
                out.result.skipped.append((doc.source, doc.line, why[i]))  # type: ignore[arg-type]
                continue
            if cfg.mode == "plain":
                out.rendered.append([Piece(doc.text)])
                out.written.append((doc, labels[i]))
                continue
            try:
                pieces = render(doc, segs[i], labels[i], cfg.mode, cfg.template, max_flagged=cfg.filter_max_flagged,
                                min_score=cfg.filter_min_score, rewriter=self.rewriter)
            except ReflectError as e:
                out.result.skipped.append((doc.source, doc.line, f"render: {e}"))
                continue
            if pieces is None:
                out.result.dropped += 1
                out.result.verdicts.update(label.verdict.value for label in labels[i])
            else:
                out.rendered.append(pieces)
                out.written.append((doc, labels[i]))
        return out

    def encode(self, prepared: Prepared) -> BatchResult:
        """Tokenize a prepared batch (mostly in the tokenizer, which releases the GIL)."""
        result = prepared.result
        result.tokens, result.meta, result.lengths = self.tokenizer.encode_documents(prepared.rendered,
                                                                                     eod=self.cfg.append_eod)
        empty = set(np.flatnonzero(result.lengths == 0).tolist())
        for j, (doc, labels) in enumerate(prepared.written):
            if j in empty:  # possible only without EOD
                result.skipped.append((doc.source, doc.line, "no tokens"))
            else:
                result.verdicts.update(label.verdict.value for label in labels)
        if empty:
            result.lengths = result.lengths[result.lengths > 0]
        return result

    def process(self, items: list[tuple[Document, StoredLabels | None]]) -> BatchResult:
        return self.encode(self.prepare(items))


# multiprocessing.Pool's initializer can only leave state in the worker process's module:
# this one-element list is that state (one Worker per process).
_WORKER_SLOT: list[Worker] = []


def _die_with_parent(parent: int) -> None:
    """Linux: a worker is killed when the job process dies (even by SIGKILL) instead of finishing
    its queued batches for nobody."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _pool_init(cfg: PreprocessConfig, tokenizer: Tokenizer, parent: int) -> None:
    _die_with_parent(parent)
    _WORKER_SLOT.append(Worker(cfg, tokenizer))


def _pool_process(items: list[tuple[Document, StoredLabels | None]]) -> BatchResult:
    return _WORKER_SLOT[0].process(items)


def _bounded(submit: Callable[[list], Callable[[], BatchResult]], batches: Iterator[Batch],
             window: int) -> Iterator[tuple[Batch, BatchResult]]:
    """Batches through ``submit(items) -> wait`` in order, with at most ``window`` in flight
    (``Pool.imap`` would read the whole corpus into its task queue ahead of the workers)."""
    pending: deque = deque()
    for batch in batches:
        pending.append((batch, submit(batch.items)))
        if len(pending) >= window:
            b, wait = pending.popleft()
            yield b, wait()
    while pending:
        b, wait = pending.popleft()
        yield b, wait()


def expand_inputs(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not found:
            raise ConfigError(f"--input {pattern!r} matches no file")
        for p in found:
            if not Path(p).is_file():
                raise DataError(f"{p}: no such input file")
            paths.append(Path(p))
    return paths


class ShardStats:
    """Counters of one shard (and, summed, of the whole dataset)."""

    def __init__(self) -> None:
        self.documents = self.dropped = self.tokens = self.reflection_tokens = self.reflections = 0
        self.verdict_tokens = 0
        self.verdicts: Counter = Counter()
        self.skipped_count = 0
        self.skipped: list[dict] = []

    def add(self, result: BatchResult) -> None:
        self.verdicts.update(result.verdicts)
        self.dropped += result.dropped
        self.documents += len(result.lengths)
        self.tokens += len(result.tokens)
        self.reflection_tokens += int(np.count_nonzero(result.meta & KIND_MASK))
        self.verdict_tokens += int(np.count_nonzero(result.meta & VERDICT_FLAG))

    def skip(self, source: str, line: int, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_LISTED_SKIPS:
            self.skipped.append({"source": source, "line": line, "reason": reason})

    def merge(self, d: dict) -> None:
        self.documents += d["documents"]
        self.dropped += d["filtered_documents"]
        self.tokens += d["tokens"]
        self.reflection_tokens += d["reflection_tokens"]
        self.verdict_tokens += d["verdict_tokens"]
        self.verdicts.update(d["verdicts"])
        self.skipped_count += d["skipped_count"]
        self.skipped += d["skipped"][: max(0, MAX_LISTED_SKIPS - len(self.skipped))]

    def as_dict(self) -> dict:
        text = self.tokens - self.reflection_tokens
        return {"documents": self.documents, "filtered_documents": self.dropped, "tokens": self.tokens,
                "reflection_tokens": self.reflection_tokens, "verdict_tokens": self.verdict_tokens,
                "overhead_pct": round(100.0 * self.reflection_tokens / text, 3) if text else 0.0,
                "verdicts": {v: self.verdicts[v] for v in sorted(self.verdicts)},
                "skipped_count": self.skipped_count, "skipped": self.skipped}


def _batches(path: Path, part: int, cfg: PreprocessConfig, stored: StoredLabelFile | None,
             start: ReadPosition) -> Iterator[Batch]:
    from megatron_reflect.data.readers import DEFAULT_MAX_CHARS, Skipped, iter_positioned

    batch = Batch([], [], start, 0)
    for rec, pos in iter_positioned(path, cfg.json_keys, cfg.id_key, cfg.max_chars or DEFAULT_MAX_CHARS, start):
        if (pos.records - 1) % cfg.partitions != part:
            continue
        batch.position = pos
        batch.records += 1
        if isinstance(rec, Skipped):
            if cfg.strict:
                raise rec.error()
            batch.skipped.append((rec.source, rec.line, rec.reason))
            continue
        batch.items.append((rec, stored.get(rec.doc_id) if stored is not None else None))
        if len(batch.items) >= cfg.batch_docs:
            yield batch
            batch = Batch([], [], pos, 0)
    if batch.records:
        yield batch


_VERDICTS = {v.value: v for v in Verdict}


class StoredLabelFile:
    """The label file of one input, read once as columns; ``get(doc_id)`` builds that document's
    rows when it is read (so a partition builds only its own documents' rows).

    ``label_file`` writes each document's rows together and in segment order; a file that does
    not is sorted first.  Each document's segment indices must be 0, 1, ... (checked for all
    documents at once with numpy)."""

    COLUMNS = ["doc_id", "seg_index", "start", "end", "text_hash", "verdict", "category", "score"]

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        try:
            table = pq.read_table(path, columns=self.COLUMNS)
        except Exception as e:  # pyarrow raises several types for a damaged file or missing columns
            raise DataError(f"{path}: not a readable label file ({e})") from e
        doc_ids = table.column("doc_id").to_pylist()
        runs = self._runs(doc_ids)
        if len(runs) != len(set(doc_ids)):  # some document's rows are not together
            table = table.sort_by([("doc_id", "ascending"), ("seg_index", "ascending")])
            doc_ids = table.column("doc_id").to_pylist()
            runs = self._runs(doc_ids)
        seg = table.column("seg_index").to_numpy(zero_copy_only=False).astype(np.int64)
        los = np.array([lo for _, lo, _ in runs], np.int64)
        lengths = np.array([hi - lo for _, lo, hi in runs], np.int64)
        expected = np.arange(len(seg)) - np.repeat(los, lengths)
        bad = np.flatnonzero(seg != expected)
        if len(bad):
            raise DataError(f"{path}: doc {doc_ids[int(bad[0])]!r} has non-contiguous segment indices")
        self.rows = {doc: (lo, hi) for doc, lo, hi in runs}
        self.start = table.column("start").to_pylist()
        self.end = table.column("end").to_pylist()
        self.hash = table.column("text_hash").to_pylist()
        self.verdict = table.column("verdict").to_pylist()
        self.category = table.column("category").to_pylist()
        self.score = table.column("score").to_pylist()
        self._labels: dict[tuple, Label] = {}

    @staticmethod
    def _runs(doc_ids: list[str]) -> list[tuple[str, int, int]]:
        runs, lo = [], 0
        for i in range(1, len(doc_ids) + 1):
            if i == len(doc_ids) or doc_ids[i] != doc_ids[lo]:
                runs.append((doc_ids[lo], lo, i))
                lo = i
        return runs

    def _label(self, row: int) -> Label:
        key = (self.verdict[row], self.category[row], self.score[row])
        label = self._labels.get(key)
        if label is None:
            verdict = _VERDICTS.get(key[0])
            if verdict is None:
                try:
                    verdict = Verdict.parse(key[0])
                except ValueError as e:
                    raise DataError(f"{self.path}: row {row}: {e}") from e
            label = self._labels[key] = Label(verdict, key[1], key[2])
        return label

    def get(self, doc_id: str) -> StoredLabels | None:
        span = self.rows.get(doc_id)
        if span is None:
            return None
        return [(self.start[r], self.end[r], self.hash[r], self._label(r)) for r in range(*span)]


def _stored_labels(path: Path, cfg: PreprocessConfig) -> StoredLabelFile | None:
    if cfg.mode == "plain" or not cfg.labels_dir:
        return None
    from megatron_reflect.data.labels import labels_path_for

    label_file = labels_path_for(path, cfg.labels_dir)
    if not Path(label_file).is_file():
        raise DataError(f"{path}: no stored labels at {label_file} (run tools/label_corpus.py first)")
    return StoredLabelFile(Path(label_file))


@dataclass
class Run:
    """Per-process state of one ``preprocess`` call: the engine, progress and resume counters."""

    process: Callable[[Iterator[Batch]], Iterator[tuple[Batch, BatchResult]]]
    bar: object = None
    pause_after: int | None = None
    commits: int = 0
    documents_resumed: int = 0
    documents_now: int = 0
    shards_resumed: int = 0


def _input_key(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _run_shard(path: Path, part: int, shard_prefix: Path, cfg: PreprocessConfig, header: dict,
               vocab_size: int, run: Run) -> dict:
    writer = ResumablePairedWriter(shard_prefix, vocab_size, {**header["config"], **_input_key(path),
                                                              "partition": part}, resume=cfg.resume)
    stats = ShardStats()
    start = START
    if writer.state is not None:
        stats.merge(writer.state["stats"])
        start = ReadPosition(*writer.state["position"])
        run.documents_resumed += stats.documents
    since_commit = 0
    try:
        for batch, result in run.process(_batches(path, part, cfg, _stored_labels(path, cfg), start)):
            skipped = sorted(batch.skipped + result.skipped, key=lambda s: s[1])
            if cfg.strict and skipped:
                raise DataError(f"{skipped[0][0]}:{skipped[0][1]}: {skipped[0][2]}")
            for s in skipped:
                stats.skip(*s)
            stats.add(result)
            if len(result.lengths):
                writer.add(result.tokens, result.meta, result.lengths)
            run.documents_now += len(result.lengths)
            since_commit += len(result.tokens)
            if run.pause_after is not None and run.commits >= run.pause_after and writer.uncommitted_documents:
                print(f"{PAUSE_ENV}: paused after {run.commits} committed chunks", file=sys.stderr, flush=True)
                while True:
                    time.sleep(3600)
            if since_commit >= cfg.chunk_tokens:
                writer.commit({"position": list(batch.position), "stats": stats.as_dict()})
                run.commits += 1
                since_commit = 0
            if run.bar is not None:
                run.bar.update(batch.records)  # type: ignore[attr-defined]
                run.bar.set_postfix(tokens=stats.tokens, skipped=stats.skipped_count, refresh=False)  # type: ignore[attr-defined]
        result_stats = {**header, "input": str(path), "partition": f"{part}/{cfg.partitions}", **stats.as_dict()}
        writer.finalize(result_stats)
    except BaseException:
        writer.close()
        raise
    return result_stats


def _engine(cfg: PreprocessConfig, tokenizer: Tokenizer, stack: list) -> Callable:
    """The batch processor: serial, a tokenizer-thread pipeline, or a process pool (see the docstring)."""
    if cfg.workers > 1 and cfg.in_line_work():
        tokenizer.set_threads(1)
        # fork: workers inherit the imported modules instead of paying the imports each;
        # nothing has run on threads yet in this process.
        method = "fork" if sys.platform == "linux" else "spawn"
        pool = mp.get_context(method).Pool(cfg.workers, initializer=_pool_init,
                                             initargs=(cfg, tokenizer, os.getpid()))
        stack.append(pool.terminate)
        return lambda batches: _bounded(lambda items: pool.apply_async(_pool_process, (items,)).get, batches,
                                        4 * cfg.workers)
    tokenizer.set_threads(cfg.workers)
    worker = Worker(cfg, tokenizer)
    if cfg.workers == 1 and cfg.in_line_work():
        return lambda batches: ((b, worker.process(b.items)) for b in batches)
    # the tokenizer thread spends its time in the tokenizer (which releases the GIL): reading,
    # parsing and rendering the next batch (this thread), and writing the previous one, overlap with it
    executor = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    stack.append(lambda: executor.shutdown(wait=True, cancel_futures=True))
    return lambda batches: _bounded(lambda items: executor.submit(worker.encode, worker.prepare(items)).result,
                                    batches, 2)


def _labeler_quality(cfg: PreprocessConfig) -> dict:
    """What the labels are worth: the labeler's stored held-out figures (stored labels: their
    files' labeler is not known here, so none)."""
    from megatron_reflect.data.labelers import labeler_quality

    if cfg.labels_dir:
        return {"labeler": f"stored:{cfg.labels_dir}", "measured": None,
                "note": "stored labels: see the stats JSON tools/label_corpus.py wrote with them"}
    return labeler_quality(cfg.labeler, cfg.labeler_options)


def preprocess(cfg: PreprocessConfig) -> dict:
    """Write ``<output_prefix>_{text_document,reflect_meta}.{bin,idx}`` and ``_stats.json``; return the stats
    (plus ``run``: documents written by this call and resumed from committed chunks; not stored)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode!r} is not one of {list(MODES)}")
    if cfg.workers < 1 or cfg.partitions < 1 or cfg.batch_docs < 1 or cfg.chunk_tokens < 1:
        raise ConfigError("--workers, --partitions, --chunk-tokens and the batch size must be >= 1")
    inputs = expand_inputs(cfg.input)
    if cfg.labels_dir and cfg.mode != "plain" and not Path(cfg.labels_dir).is_dir():
        raise ConfigError(f"--labels-dir {cfg.labels_dir}: no such directory")
    prefix = Path(cfg.output_prefix)
    if cfg.resume and is_complete(prefix):
        done = read_stats(prefix)
        if done.get("config") == cfg.fingerprint():
            return done
    pool = cfg.workers > 1 and cfg.in_line_work()
    configure_threads(1 if pool else cfg.workers)  # before the tokenizer first encodes (see there)
    tokenizer = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.template)
    header = {"config": cfg.fingerprint(), "tokenizer": tokenizer.describe(),
              "reflection_template": dataclasses.asdict(cfg.template), "mode": cfg.mode}
    if cfg.mode != "plain":
        header["labeler_quality"] = _labeler_quality(cfg)
        if cfg.progress:
            from megatron_reflect.data.labelers import describe_quality

            print(describe_quality(header["labeler_quality"]), file=sys.stderr)
    shard_dir = Path(f"{prefix}.shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [(path, part, shard_dir / f"{i:05d}-{path.name}-p{part}of{cfg.partitions}")
              for i, path in enumerate(inputs) for part in range(cfg.partitions)]
    stack: list[Callable[[], object]] = []
    pause = os.environ.get(PAUSE_ENV)
    run = Run(_engine(cfg, tokenizer, stack), pause_after=int(pause) if pause else None)
    if cfg.progress:
        from tqdm import tqdm

        run.bar = tqdm(desc=f"preprocess[{cfg.mode}]", unit="doc", dynamic_ncols=True)
        stack.append(run.bar.close)  # type: ignore[attr-defined]
    total = ShardStats()
    try:
        for path, part, shard_prefix in shards:
            if cfg.resume and is_complete(shard_prefix):
                done = read_stats(shard_prefix)
                if done.get("config") != header["config"]:
                    raise ConfigError(f"{shard_prefix}: finished with other settings; --resume needs the same "
                                      f"settings (or remove {shard_dir})")
                run.documents_resumed += done["documents"]
                run.shards_resumed += 1
            else:
                done = _run_shard(path, part, shard_prefix, cfg, header, tokenizer.vocab_size, run)
            total.merge(done)
    finally:
        for close in reversed(stack):
            close()
    if total.documents == 0:
        raise DataError(f"{', '.join(map(str, inputs))}: no document was written "
                        f"({total.skipped_count} skipped, {total.dropped} filtered)")
    result = {**header, "inputs": [str(p) for p in inputs], **total.as_dict()}
    if len(shards) == 1:  # nothing to merge: the finished shard becomes the dataset
        stats_path(prefix).unlink(missing_ok=True)
        for src, dst in zip(dataset_files(shards[0][2]), dataset_files(prefix)):
            os.replace(src, dst)
        write_json_atomic(stats_path(prefix), result)
    else:
        writer = PairedWriter(prefix, tokenizer.vocab_size)
        try:
            for _, _, shard_prefix in shards:
                writer.add_index(shard_prefix)
            writer.finalize(result)
        except BaseException:
            writer.abort()
            raise
    shutil.rmtree(shard_dir, ignore_errors=True)
    return {**result, "run": {"documents_written": run.documents_now, "documents_resumed": run.documents_resumed,
                              "shards_resumed": run.shards_resumed, "chunks_committed": run.commits}}


def read_stats(prefix: str | Path) -> dict:
    path = stats_path(prefix)
    if not path.is_file():
        raise DataError(f"{prefix}: no {path.name}; the dataset is missing or was not completed")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed stats JSON ({e})") from None
