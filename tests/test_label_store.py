"""Label store: atomic parquet round trip, label_file stats/skips, resume of a killed run
(checked by the real loopback guard server's request count), and the label_corpus CLI."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from guard_server import GuardServer
from megatron_reflect.data.labelers import build_labeler
from megatron_reflect.data.labelers.base import LabelerError
from megatron_reflect.data.labels import (label_file, labels_path_for, read_label_metadata, read_labels, text_hash,
                                          write_labels)
from megatron_reflect.data.segment import SegmenterConfig, segment_document
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.errors import DataError
from megatron_reflect.reflection import Verdict

S, U, C = Verdict.SAFE, Verdict.UNSAFE, Verdict.CONTROVERSIAL


def test_write_read_roundtrip_atomic(tmp_path):
    rows = [(Segment("a", 0, 0, 6, "Hello "), Label(S, None, 0.1)),
            (Segment("a", 1, 6, 12, "world."), Label(U, "Violent", 0.9)),
            (Segment("b", 0, 0, 3, "Hi."), Label(C, "PII"))]
    path = tmp_path / "x" / "f.jsonl.labels.parquet"
    write_labels(path, rows, {"labeler": "test"})
    got = read_labels(path)
    assert list(got) == [("a", 0), ("a", 1), ("b", 0)]
    assert got[("a", 1)][0] == text_hash("world.") and got[("a", 1)][1].verdict is U
    assert got[("a", 1)][1].category == "Violent" and got[("a", 1)][1].score == pytest.approx(0.9)
    assert got[("b", 0)][1] == Label(C, "PII", None)
    assert read_label_metadata(path) == {"labeler": "test"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    assert text_hash("world.") != text_hash("world!") and len(text_hash("x")) == 16
    assert labels_path_for("/data/in/part-3.jsonl.zst", tmp_path) == tmp_path / "part-3.jsonl.zst.labels.parquet"
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable label file"):
        read_labels(tmp_path / "bad.parquet")


def _corpus(path, n_docs=10):
    lines = []
    for i in range(n_docs):
        text = ("Sure, here is how to make a pipe bomb and kill people. " if i % 3 == 0 else
                f"Paris is the capital of France number {i}. ") + f"The river Seine flows through city {i}."
        lines.append(json.dumps({"id": f"doc{i}", "text": text}))
    lines.insert(4, '{"id": broken')
    lines.insert(7, json.dumps({"id": "doc2", "text": "duplicate id."}))
    path.write_text("\n".join(lines) + "\n")


def test_label_file_stats_and_values(tmp_path):
    corpus = tmp_path / "c.jsonl"
    _corpus(corpus)
    out = labels_path_for(corpus, tmp_path / "labels")
    labeler = build_labeler("classifier")
    cfg = SegmenterConfig(max_words=12)
    stats = label_file(corpus, out, labeler, cfg, batch_size=4)
    assert stats["documents"] == 10 and stats["segments"] == 20 and stats["segments_labelled_now"] == 20
    assert stats["skipped"] == 2 and stats["skipped_by_reason"] == {"malformed JSON": 1, "duplicate document id": 1}
    assert [(r["line"], r["reason"].split(":")[0]) for r in stats["skipped_records"]] == [
        (5, "malformed JSON"), (8, "duplicate document id")]
    labels = read_labels(out)
    assert len(labels) == 20
    # the stored labels are the classifier's labels of exactly these segments
    docs = [Document(f"doc{i}", json.loads(line)["text"]) for i, line in
            enumerate(ln for ln in corpus.read_text().splitlines() if '"duplicate' not in ln and "broken" not in ln)]
    for doc in docs:
        for seg, lab in zip(segment_document(doc, cfg), labeler.label(segment_document(doc, cfg), {})):
            h, stored = labels[(doc.doc_id, seg.index)]
            assert h == text_hash(seg.text) and stored.verdict is lab.verdict and stored.category == lab.category
    assert sum(v for k, v in stats["verdicts_labelled_now"].items() if k != "Safe") >= 4  # the 4 pipe-bomb docs
    assert json.loads(read_label_metadata(out)["segmenter"])["max_words"] == 12
    assert label_file(corpus, out, labeler, cfg)["status"] == "already complete"
    with pytest.raises(DataError, match=r"c.jsonl:5: malformed JSON"):
        label_file(corpus, tmp_path / "strict.parquet", labeler, cfg, strict=True)


def test_killed_run_resumes_without_relabelling(tmp_path):
    corpus = tmp_path / "c.jsonl"
    _corpus(corpus)
    out = tmp_path / "labels" / "c.jsonl.labels.parquet"
    cfg = SegmenterConfig(max_words=12)  # 2 segments per document
    # The server dies after 8 answers: batches of 4 segments (2 documents) -> 2 parts written.
    with GuardServer(fail_after=8) as server:
        labeler = build_labeler("openai", endpoint=server.url, concurrency=1, max_retries=1, backoff_s=0.01)
        with pytest.raises(LabelerError, match="no answer after 2 attempts"):
            label_file(corpus, out, labeler, cfg, batch_size=4, part_segments=4)
    parts = sorted((out.parent / (out.name + ".parts")).glob("part-*.parquet"))
    assert [pq.read_table(p).num_rows for p in parts] == [4, 4] and not out.exists()
    with pytest.raises(DataError, match="left by a run with other settings"):  # parts of another segmentation
        label_file(corpus, out, build_labeler("classifier"), SegmenterConfig(max_words=5))
    with GuardServer() as server:
        labeler = build_labeler("openai", endpoint=server.url, concurrency=2)
        stats = label_file(corpus, out, labeler, cfg, batch_size=4, part_segments=4)
        assert server.requests == 12  # only the 6 unfinished documents were asked
    assert stats["documents_resumed"] == 4 and stats["segments_resumed"] == 8 and stats["segments"] == 20
    assert not (out.parent / (out.name + ".parts")).exists()
    resumed = read_labels(out)
    fresh = tmp_path / "fresh.parquet"
    label_file(corpus, fresh, build_labeler("classifier"), cfg)
    assert {k: (h, lab.verdict, lab.category) for k, (h, lab) in resumed.items()} == \
        {k: (h, lab.verdict, lab.category) for k, (h, lab) in read_labels(fresh).items()}


def test_label_corpus_cli_shards(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        _corpus(tmp_path / name, n_docs=3)
    labels_dir = tmp_path / "labels"
    cmd = [sys.executable, "tools/label_corpus.py", "--input", str(tmp_path / "*.jsonl"), "--labels-dir",
           str(labels_dir), "--segment-words", "12", "--num-shards", "2"]
    r0 = subprocess.run(cmd + ["--shard-index", "0"], capture_output=True, text=True)
    assert r0.returncode == 0, r0.stderr
    assert sorted(p.name for p in labels_dir.iterdir()) == ["a.jsonl.labels.parquet", "c.jsonl.labels.parquet"]
    first = [json.loads(line) for line in r0.stdout.splitlines()]
    assert [(s["documents"], s["segments"], s["skipped"]) for s in first] == [(3, 6, 2)] * 2  # a broken line and a duplicate id each
    r1 = subprocess.run(cmd + ["--shard-index", "1", "--stats", str(tmp_path / "s.json")], capture_output=True,
                        text=True)
    assert r1.returncode == 0, r1.stderr
    assert json.loads((tmp_path / "s.json").read_text())[0]["output"].endswith("b.jsonl.labels.parquet")
    bad = subprocess.run(cmd + ["--shard-index", "0", "--strict", "--no-resume"], capture_output=True, text=True)
    assert bad.returncode == 1 and "a.jsonl:4: malformed JSON" in bad.stderr and "Traceback" not in bad.stderr
