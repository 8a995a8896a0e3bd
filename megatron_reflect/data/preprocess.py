"""Corpus files -> a paired (tokens + reflection metadata) Megatron dataset, with stats.

Pipeline per document: read -> segment -> label (a labeler) -> render (mode) -> tokenize
pieces (+ EOD).  With labels stored by ``tools/label_corpus.py`` (``labels_dir``) the
segments are the stored spans, each checked against its text hash (a changed document is
skipped), so rendering again costs no segmentation and no labelling.  Worker processes run
the per-document pipeline on batches of documents; the parent process is the one writer.

Shards: each input file, split into ``partitions`` parts (record ``i`` goes to part ``i mod N``),
is one shard written to ``<prefix>.shards/`` and merged into ``<prefix>`` with ``add_index``.
A finished shard has its stats file, so ``resume`` skips it.  A bad record is skipped and
listed (file, line, reason) in the stats, or raises with ``strict``; nothing is renamed into
place before it is complete.  Cost: dominated by tokenization (and by the labeler when labels
are not stored).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from megatron_reflect.data.indexed import PairedWriter, dataset_files, is_complete, stats_path, write_json_atomic
from megatron_reflect.data.render import MODES, build_rewriter, render
from megatron_reflect.data.tokenizers import Tokenizer, as_arrays, build_tokenizer
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.errors import ConfigError, DataError, ReflectError
from megatron_reflect.reflection import KIND_MASK, TEXT, ReflectionTemplate, is_verdict_token

MAX_LISTED_SKIPS = 1000


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


@dataclass
class Outcome:
    """What a worker returns for one record."""

    tokens: np.ndarray | None = None
    meta: np.ndarray | None = None
    verdicts: Counter = field(default_factory=Counter)
    skipped: str | None = None  # reason
    dropped: bool = False
    source: str = ""
    line: int = 0


StoredLabels = list[tuple[int, int, str, Label]]  # per segment index: (start, end, text hash, label)


class Worker:
    """The per-document pipeline; one per worker process (built once, reused for every batch)."""

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
    def _stored(doc: Document, rows: StoredLabels | None, out: Outcome) -> tuple[list[Segment], list[Label]]:
        """The segments the stored labels were computed on (their spans), checked by text hash."""
        from megatron_reflect.data.labels import text_hash

        if rows is None:
            out.skipped = "no stored labels for this document"
            return [], []
        segs = [Segment(doc.doc_id, i, a, b, doc.text[a:b]) for i, (a, b, _, _) in enumerate(rows)]
        if rows[-1][1] != len(doc.text) or any(h != text_hash(s.text) for (_, _, h, _), s in zip(rows, segs)):
            out.skipped = "stored labels do not match the text (segment hashes differ)"
        return segs, [label for _, _, _, label in rows]

    def _labels(self, docs: list[Document], segs: list[list[Segment]], out: list[Outcome]) -> list[list[Label] | None]:
        labels: list[list[Label] | None] = [None] * len(docs)
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
                out[i].skipped = f"labeler {self.cfg.labeler!r} failed: {e}"
        return labels

    def process(self, batch: list[tuple[Document, StoredLabels | None]]) -> list[Outcome]:
        docs = [d for d, _ in batch]
        out = [Outcome(source=d.source, line=d.line) for d in docs]
        plain = self.cfg.mode == "plain"
        segs: list[list[Segment]] = [[] for _ in docs]
        labels: list[list[Label] | None] = [[] for _ in docs]
        if not plain and self.cfg.labels_dir:
            for i, (doc, rows) in enumerate(batch):
                segs[i], labels[i] = self._stored(doc, rows, out[i])
        elif not plain:
            for i, doc in enumerate(docs):
                try:
                    segs[i] = self._segments(doc)
                except ReflectError as e:
                    out[i].skipped = f"segmenter: {e}"
            live = [i for i in range(len(docs)) if out[i].skipped is None]
            got = self._labels([docs[i] for i in live], [segs[i] for i in live], [out[i] for i in live])
            for i, lab in zip(live, got):
                labels[i] = lab
        rendered = []
        for i, doc in enumerate(docs):
            if out[i].skipped is not None or labels[i] is None:
                continue
            try:
                pieces = render(doc, segs[i], labels[i], self.cfg.mode, self.cfg.template,
                                max_flagged=self.cfg.filter_max_flagged, min_score=self.cfg.filter_min_score,
                                rewriter=self.rewriter)
            except ReflectError as e:
                out[i].skipped = f"render: {e}"
                continue
            out[i].verdicts = Counter(label.verdict.value for label in labels[i])
            if pieces is None:
                out[i].dropped = True
            else:
                rendered.append((i, pieces))
        encoded = self.tokenizer.encode_pieces_batch([p for _, p in rendered])
        for (i, _), (tokens, meta) in zip(rendered, encoded):
            if self.cfg.append_eod:
                tokens.append(self.tokenizer.eod_id)
                meta.append(TEXT)
            if not tokens:
                out[i].skipped = "no tokens"
                continue
            out[i].tokens, out[i].meta = as_arrays(tokens, meta, self.tokenizer.vocab_size)
        return out


# multiprocessing.Pool's initializer can only leave state in the worker process's module:
# this one-element list is that state (one Worker per process).
_WORKER_SLOT: list[Worker] = []


def _pool_init(cfg: PreprocessConfig, tokenizer: Tokenizer) -> None:
    _WORKER_SLOT.append(Worker(cfg, tokenizer))


def _pool_process(batch: list[tuple[Document, StoredLabels | None]]) -> list[Outcome]:
    return _WORKER_SLOT[0].process(batch)


def _bounded_imap(pool, batches: Iterator[list], window: int) -> Iterator[list[Outcome]]:
    """``pool.imap`` in order, but with at most ``window`` batches in flight: ``Pool.imap``
    would read the whole corpus into its task queue ahead of the workers."""
    pending: deque = deque()
    for batch in batches:
        pending.append(pool.apply_async(_pool_process, (batch,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


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

    def add(self, o: Outcome) -> None:
        if o.skipped is not None:
            self.skip(o.source, o.line, o.skipped)
            return
        self.verdicts.update(o.verdicts)
        if o.dropped:
            self.dropped += 1
            return
        assert o.tokens is not None and o.meta is not None
        kinds = o.meta & KIND_MASK
        self.documents += 1
        self.tokens += len(o.tokens)
        self.reflection_tokens += int(np.count_nonzero(kinds))
        self.verdict_tokens += int(np.count_nonzero(is_verdict_token(o.meta)))

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


def _batches(path: Path, part: int, cfg: PreprocessConfig, stored: dict[str, StoredLabels] | None,
             stats: ShardStats) -> Iterator[list[tuple[Document, StoredLabels | None]]]:
    from megatron_reflect.data.readers import Skipped, iter_records

    kwargs = {"max_chars": cfg.max_chars} if cfg.max_chars else {}
    batch: list[tuple[Document, StoredLabels | None]] = []
    for n, rec in enumerate(iter_records(path, cfg.json_keys, cfg.id_key, **kwargs)):
        if n % cfg.partitions != part:
            continue
        if isinstance(rec, Skipped):
            if cfg.strict:
                raise rec.error()
            stats.skip(rec.source, rec.line, rec.reason)
            continue
        batch.append((rec, stored.get(rec.doc_id) if stored is not None else None))
        if len(batch) >= cfg.batch_docs:
            yield batch
            batch = []
    if batch:
        yield batch


def _stored_labels(path: Path, cfg: PreprocessConfig) -> dict[str, StoredLabels] | None:
    if cfg.mode == "plain" or not cfg.labels_dir:
        return None
    import pyarrow.parquet as pq

    from megatron_reflect.data.labels import labels_path_for, read_labels

    label_file = labels_path_for(path, cfg.labels_dir)
    if not Path(label_file).is_file():
        raise DataError(f"{path}: no stored labels at {label_file} (run tools/label_corpus.py first)")
    labels = read_labels(label_file)
    # the segment spans (columns documented in labels.py): rendering uses the segments that were labelled
    spans = pq.read_table(label_file, columns=["doc_id", "seg_index", "start", "end"]).to_pydict()
    grouped: dict[str, list[tuple[int, int, int, str, Label]]] = {}
    for doc_id, index, start, end in zip(spans["doc_id"], spans["seg_index"], spans["start"], spans["end"]):
        h, label = labels[(doc_id, index)]
        grouped.setdefault(doc_id, []).append((index, start, end, h, label))
    out: dict[str, StoredLabels] = {}
    for doc_id, rows in grouped.items():
        rows.sort(key=lambda r: r[0])
        if [r[0] for r in rows] != list(range(len(rows))):
            raise DataError(f"{label_file}: doc {doc_id!r} has non-contiguous segment indices")
        out[doc_id] = [r[1:] for r in rows]
    return out


def _run_shard(path: Path, part: int, shard_prefix: Path, cfg: PreprocessConfig, header: dict,
               vocab_size: int, process, bar) -> dict:
    stats = ShardStats()
    writer = PairedWriter(shard_prefix, vocab_size)
    try:
        for outcomes in process(_batches(path, part, cfg, _stored_labels(path, cfg), stats)):
            for o in outcomes:
                if o.skipped is not None and cfg.strict:
                    raise DataError(f"{o.source}:{o.line}: {o.skipped}")
                stats.add(o)
                if o.tokens is not None and o.skipped is None:
                    writer.add(o.tokens, o.meta)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tokens=stats.tokens, skipped=stats.skipped_count, refresh=False)
        result = {**header, "input": str(path), "partition": f"{part}/{cfg.partitions}", **stats.as_dict()}
        writer.finalize(result)
    except BaseException:
        writer.abort()
        raise
    return result


def preprocess(cfg: PreprocessConfig) -> dict:
    """Write ``<output_prefix>_{text_document,reflect_meta}.{bin,idx}`` and ``_stats.json``; return the stats."""
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode!r} is not one of {list(MODES)}")
    if cfg.workers < 1 or cfg.partitions < 1 or cfg.batch_docs < 1:
        raise ConfigError("--workers, --partitions and the batch size must be >= 1")
    inputs = expand_inputs(cfg.input)
    if cfg.labels_dir and cfg.mode != "plain" and not Path(cfg.labels_dir).is_dir():
        raise ConfigError(f"--labels-dir {cfg.labels_dir}: no such directory")
    prefix = Path(cfg.output_prefix)
    if cfg.resume and is_complete(prefix):
        done = read_stats(prefix)
        if done.get("config") == cfg.fingerprint():
            return done
    tokenizer = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.template)
    header = {"config": cfg.fingerprint(), "tokenizer": tokenizer.describe(),
              "reflection_template": dataclasses.asdict(cfg.template), "mode": cfg.mode}
    shard_dir = Path(f"{prefix}.shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [(path, part, shard_dir / f"{i:05d}-{path.name}-p{part}of{cfg.partitions}")
              for i, path in enumerate(inputs) for part in range(cfg.partitions)]
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"preprocess[{cfg.mode}]", unit="doc", dynamic_ncols=True)
    pool = None
    if cfg.workers > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # fork: workers inherit the imported modules (torch, transformers) instead of paying
        # ~10 s of imports each; nothing has run on threads yet in this process.
        method = "fork" if sys.platform == "linux" else "spawn"
        pool = mp.get_context(method).Pool(cfg.workers, initializer=_pool_init, initargs=(cfg, tokenizer))
        process = lambda batches: _bounded_imap(pool, batches, 4 * cfg.workers)  # noqa: E731
    else:
        worker = Worker(cfg, tokenizer)
        process = lambda batches: map(worker.process, batches)  # noqa: E731
    total = ShardStats()
    try:
        for path, part, shard_prefix in shards:
            if cfg.resume and is_complete(shard_prefix):
                done = read_stats(shard_prefix)
                if done.get("config") != header["config"]:
                    raise ConfigError(f"{shard_prefix}: finished with other settings; --resume needs the same "
                                      f"settings (or remove {shard_dir})")
            else:
                done = _run_shard(path, part, shard_prefix, cfg, header, tokenizer.vocab_size, process, bar)
            total.merge(done)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
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
    return result


def read_stats(prefix: str | Path) -> dict:
    path = stats_path(prefix)
    if not path.is_file():
        raise DataError(f"{prefix}: no {path.name}; the dataset is missing or was not completed")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed stats JSON ({e})") from None
