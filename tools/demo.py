"""`make demo`: the MedSafetyWorld comparison of raw / filter / rewrite / reflect pretraining.

For 3 seeds: generate the world, build the four corpus variants through the data pipeline,
pretrain one ~0.9M-parameter model per variant with the project's trainer (identical steps and
tokens), export it to Hugging Face, finetune all on the same safe Q/A set, and evaluate each
exactly (trap queries, attacks, reflection probe).  Two single-thread jobs run at a time; at
default size the whole run takes about 30 minutes on a 2-core CPU.  Re-running skips every
finished stage.  Results: results/medsafetyworld/{summary.json,table.md,plot.png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="test size: small world, 1 seed, a few steps (<3 min)")
    parser.add_argument("--out", default=None, help="output directory (default results/medsafetyworld, "
                                                    "or results/medsafetyworld-quick with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of raw,filter,filter_noisy,rewrite,reflect "
                             "(default raw,filter,rewrite,reflect)")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps per model (default 360)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel single-thread jobs (default 2)")
    args = parser.parse_args(argv)

    from megatron_reflect.world.experiment import ExperimentConfig, quick_experiment, run_experiment

    out = args.out or ("results/medsafetyworld-quick" if args.quick else "results/medsafetyworld")
    cfg = quick_experiment(out) if args.quick else ExperimentConfig(out_dir=out)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.variants:
        cfg = dataclasses.replace(cfg, variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()))
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, train_steps=args.steps))
    if args.jobs is not None:
        cfg = dataclasses.replace(cfg, jobs=args.jobs)
    start = time.time()
    stamp = lambda msg: print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)  # noqa: E731
    run_experiment(cfg, log=stamp)
    print()
    print(open(f"{out}/table.md", encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
