#!/usr/bin/env python
"""Microbatch loading: the torch DataLoader (default) vs the optional NVIDIA DALI loader.

Builds a reflected dataset with the real pipeline (tests/train_corpus.py: oracle labels,
SentencePiece), then times iterating the same microbatches with both loaders, in one run,
alternating, ``--repeats`` times; prints microbatches/s and the ratio DALI / torch.  On
CPU this measures pure loader overhead (the samples are memory-mapped token arrays).

    python benchmarks/bench_data_loading.py [--seq 1024] [--micro-batch 8] [--batches 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def time_loader(dataset, total: int, mbs: int, loader: str, workers: int) -> float:
    from megatron_reflect.train.data_loading import microbatches

    start = time.perf_counter()
    n = sum(1 for _ in microbatches(dataset, 0, total, mbs, 0, 1, num_workers=workers, loader=loader))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="torch DataLoader workers / DALI threads (min 1)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from train_corpus import make_dataset

    from megatron_reflect.data.dataset import DataConfig
    from megatron_reflect.train.data_loading import build_datasets

    total = args.batches * args.micro_batch
    with tempfile.TemporaryDirectory() as tmp:
        prefix = make_dataset(Path(tmp) / "data", n_records=300)
        dataset, _ = build_datasets(DataConfig(blend=[prefix], seq_length=args.seq, split="100,0,0"), total, 0)
        rates: dict[str, list[float]] = {"torch": [], "dali": []}
        for _ in range(args.repeats):
            for loader in rates:
                rates[loader].append(time_loader(dataset, total, args.micro_batch, loader, args.workers))
    t, d = statistics.median(rates["torch"]), statistics.median(rates["dali"])
    print(f"{args.batches} microbatches of {args.micro_batch} x {args.seq} tokens, workers/threads {args.workers}")
    print(f"torch DataLoader: {t:,.0f} microbatches/s  (runs {', '.join(f'{x:,.0f}' for x in rates['torch'])})")
    print(f"NVIDIA DALI:      {d:,.0f} microbatches/s  (runs {', '.join(f'{x:,.0f}' for x in rates['dali'])})")
    print(f"ratio DALI / torch throughput: {d / t:.2f}")


if __name__ == "__main__":
    main()
