"""`make demo`: MedSafetyWorld v2, the pre-registered comparison of filter / rewrite / reflect
(and the reflect_perm control) on fresh test seeds.

For each test seed: generate the world, build the corpus variants through the data pipeline,
pretrain one small model per variant with the project's trainer (identical steps and tokens),
export it to Hugging Face, evaluate it, finetune all on the same safe set, and evaluate again
by log-probabilities (greedy and sampled generation through the reflection monitor on a
subsample as cross-checks).  Then the gates per seed, the paired per-seed differences with
their p-values, and one sentence saying whether the pre-registered success criterion held.

The configuration is the one frozen by calibration on excluded seeds
(configs/world/demo.yaml, written by tools/calibrate_world.py before any test seed ran).
Two single-thread worker processes by default; re-running skips every finished stage.
Results: results/medsafetyworld/{summary.json,table.md,plot.png}.

How much do the figures depend on the machine's arithmetic?  Rerun the same configuration on
another MKL code path and compare (per figure and per seed; two torch threads reproduce one
bit for bit on this machine, so they are no proxy):

    MKL_CBWR=COMPATIBLE python tools/demo.py --variants filter,reflect --out results/medsafetyworld-cbwr
    python tools/demo.py --compare results/medsafetyworld-cbwr
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FROZEN = ROOT / "configs" / "world" / "demo.yaml"


def load_frozen(path: Path):
    """(experiment config: defaults, then the frozen calibration choice (a YAML mapping); the
    calibration provenance recorded in the file, {} if none)."""
    import yaml

    from megatron_reflect.config import merge
    from megatron_reflect.world.experiment import ExperimentConfig

    cfg, provenance = ExperimentConfig(), {}
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        provenance = data.pop("calibration", None) or {}  # provenance, not a field
        cfg = merge(cfg, data, where=str(path))
    return cfg, provenance


def provenance_line(provenance: dict) -> str:
    if not provenance:
        return "configuration: built-in defaults (no frozen calibration file)"
    line = f"configuration: calibration point {provenance.get('point')!r} frozen {provenance.get('frozen_at', '?')}"
    if provenance.get("passes") is False:
        counts = provenance.get("gate_counts", {})
        line += (f"; it did NOT pass calibration gates {', '.join(provenance.get('failed_gates', []))} "
                 f"(seeds passing: {', '.join(f'{g} {c}/5' for g, c in counts.items())}), so this test ran where "
                 "the monitor's transfer to traps was known to be unreliable")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="test size: small world, 1 seed, a few steps (~1 min)")
    parser.add_argument("--out", default=None, help="output directory (default results/medsafetyworld, "
                                                    "or results/medsafetyworld-quick with --quick)")
    parser.add_argument("--config", default=str(FROZEN), help="frozen configuration (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=None, help="number of test seeds, from 0 (default: the config's)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of raw,filter,filter_noisy,rewrite,reflect,reflect_perm "
                             "(default filter,rewrite,reflect,reflect_perm)")
    parser.add_argument("--with-raw", action="store_true", help="also train the raw variant (not part of the test)")
    parser.add_argument("--attacks", action="store_true",
                        help="also run the prefill, forged-Safe and finetuning (k=10/100) attacks")
    parser.add_argument("--jobs", type=int, default=None, help="parallel worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default 1)")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="then print how far every figure moves between this run and DIR, another run of the "
                             "same configuration (another machine, or MKL_CBWR=COMPATIBLE), over the seeds and "
                             "variants both completed; also written to <out>/compare-<DIR name>.md")
    args = parser.parse_args(argv)

    from megatron_reflect.errors import ReflectError
    from megatron_reflect.world.experiment import quick_experiment, run_experiment

    out = args.out or ("results/medsafetyworld-quick" if args.quick else "results/medsafetyworld")
    provenance: dict = {}
    try:
        if args.quick:
            cfg = quick_experiment(out)
        else:
            cfg, provenance = load_frozen(Path(args.config))
            cfg = dataclasses.replace(cfg, out_dir=out)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.variants:
        cfg = dataclasses.replace(cfg, variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()))
    if args.with_raw and "raw" not in cfg.variants:
        cfg = dataclasses.replace(cfg, variants=("raw",) + tuple(cfg.variants))
    for name in ("attacks", "jobs", "threads"):
        value = getattr(args, name)
        if value not in (None, False):
            cfg = dataclasses.replace(cfg, **{name: value})
    start = time.time()
    stamp = lambda msg: print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)  # noqa: E731
    try:
        summary = run_experiment(cfg, log=stamp)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(open(f"{out}/table.md", encoding="utf-8").read())
    print(summary["sentence"])
    if not args.quick:
        print(provenance_line(provenance))
    print(f"total wall time: {time.time() - start:.0f} s")
    return compare(Path(out), Path(args.compare), cfg) if args.compare else 0


def compare(out: Path, other: Path, cfg) -> int:
    """Print and write the comparison of two runs of the same configuration."""
    import json

    from megatron_reflect.world.report import compare_runs

    config = other / "experiment_config.json"
    if not config.is_file():
        print(f"error: {config}: not found (--compare needs a directory written by tools/demo.py)", file=sys.stderr)
        return 2
    theirs = json.loads(config.read_text())
    variants = [v for v in cfg.variants if v in theirs.get("variants", [])]
    text = compare_runs(out, other, cfg.seeds, variants, (str(out), str(other)))
    if text is None:
        print(f"error: no seed has every variant of {variants} in both {out} and {other}", file=sys.stderr)
        return 1
    print()
    print(text)
    path = out / f"compare-{other.name}.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
