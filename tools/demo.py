"""`make demo`: MedSafetyWorld v2, the pre-registered comparison of filter / rewrite / reflect
(and the reflect_perm control) on fresh test seeds.

For each test seed: generate the world, build the corpus variants through the data pipeline,
pretrain one small model per variant with the project's trainer (identical steps and tokens),
export it to Hugging Face, evaluate it, finetune all on the same safe set, and evaluate again
by log-probabilities (greedy and sampled generation through the reflection monitor on a
subsample as cross-checks).  Then the gates per seed, the paired per-seed differences with
their p-values, and one sentence saying whether the registration's success criterion held.

By default it runs the registered confirmatory test: once configs/world/registration.yaml is
committed with status "registered", its frozen configuration (configs/world/confirmatory.yaml)
on its test seeds.  Before that, configs/world/exploratory.yaml: an issue-21 calibration point on
8 of its own calibration seeds (written by tools/calibrate_world.py --exploratory POINT), and
the output says it is not a test.  ``--config FILE`` runs another configuration file (e.g.
configs/world/demo.yaml, the earlier bf16 point on seeds 0-7).
Two single-thread worker processes by default; re-running skips every finished stage.
Results: {summary.json,table.md,plot.png} in results/medsafetyworld/ (the registered test) or
results/medsafetyworld-<configuration name>/.

How much do the figures depend on the machine's arithmetic?  Rerun the same configuration on
another MKL code path and compare (per figure and per seed; two torch threads reproduce one
bit for bit on this machine, so they are no proxy):

    MKL_CBWR=COMPATIBLE python tools/demo.py --variants filter,reflect --out results/medsafetyworld-cbwr
    python tools/demo.py --compare results/medsafetyworld-cbwr
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FROZEN = ROOT / "configs" / "world" / "demo.yaml"
EXPLORATORY = ROOT / "configs" / "world" / "exploratory.yaml"
REGISTRATION = ROOT / "configs" / "world" / "registration.yaml"


def default_config() -> tuple[Path, dict | None]:
    """(configuration file, registration or None): the registered test's frozen configuration once
    the registration is committed as registered, else the exploratory calibration point (else the
    earlier demo point)."""
    from megatron_reflect.world.registration import REGISTERED, load_registration

    if REGISTRATION.is_file():
        reg = load_registration(REGISTRATION)
        if reg["status"] == REGISTERED:
            return ROOT / reg["configuration"]["file"], reg
    return (EXPLORATORY if EXPLORATORY.is_file() else FROZEN), None


def registration_line(reg: dict | None) -> str:
    if reg is None:
        return ("NOT a test: configs/world/registration.yaml is not registered, so "
                "this ran an exploratory configuration on seeds that earlier runs had looked at")
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    code = str(reg.get("code_commit") or "?")
    if head.startswith(code):
        same = "the same commit"
    else:  # the registration commit comes after the code commit: say whether anything but it changed
        changed = subprocess.run(["git", "diff", "--quiet", code, "HEAD", "--", "megatron_reflect", "tools",
                                  "configs/world", "pyproject.toml", ":(exclude)configs/world/registration.yaml"],
                                 cwd=ROOT, capture_output=True)
        same = f"HEAD is {head[:12] or 'unknown'}; " + {0: "code and configuration unchanged since",
                                                        1: f"code or configuration CHANGED since: `git checkout "
                                                           f"{code[:12]}` reruns the registered code"}.get(
            changed.returncode, "cannot compare with git")
    return (f"registered test: configuration {reg['configuration']['file']} (sha256 "
            f"{str(reg['configuration'].get('sha256'))[:12]}), test seeds {reg['test_seeds']}, registered at code "
            f"commit {str(code)[:12]} ({same})")


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
    verb, when = (("frozen", provenance["frozen_at"]) if "frozen_at" in provenance
                  else ("written", provenance.get("written_at", "?")))
    line = f"configuration: calibration point {provenance.get('point')!r} {verb} {when}"
    if provenance.get("rule"):
        line += f" ({provenance['rule']})"
    if provenance.get("passes") is False:
        counts = provenance.get("gate_counts", {})
        n = len(provenance.get("seeds", [])) or 5
        failed = provenance.get("failed_gates") or [g for g, c in counts.items() if c < math.ceil(0.8 * n)]
        line += (f"; it did NOT pass calibration gates {', '.join(failed)} "
                 f"(seeds passing: {', '.join(f'{g} {c}/{n}' for g, c in counts.items())})")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="test size: small world, 1 seed, a few steps (~1 min)")
    parser.add_argument("--out", default=None, help="output directory (default: results/medsafetyworld for the "
                        "registered test, results/medsafetyworld-<config name> for another configuration, "
                        "results/medsafetyworld-quick with --quick)")
    parser.add_argument("--config", default=None, help="configuration file (default: the registered test's, "
                        "configs/world/confirmatory.yaml, once configs/world/registration.yaml is registered; "
                        "configs/world/exploratory.yaml before)")
    parser.add_argument("--seeds", type=int, default=None, help="run only the first N of the configuration's seeds")
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

    out = args.out or "results/medsafetyworld-quick"
    provenance: dict = {}
    reg = None
    try:
        if args.quick:
            cfg = quick_experiment(out)
        else:
            path, reg = (Path(args.config), None) if args.config else default_config()
            cfg, provenance = load_frozen(path)
            out = args.out or ("results/medsafetyworld" if reg else f"results/medsafetyworld-{path.stem}")
            cfg = dataclasses.replace(cfg, out_dir=out)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(cfg.seeds[:args.seeds]))
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
        if not args.config:
            print(registration_line(reg))
    print(f"total wall time: {time.time() - start:.0f} s")
    return compare(Path(out), Path(args.compare), cfg) if args.compare else 0


def compare(out: Path, other: Path, cfg) -> int:
    """Print and write the comparison of two runs of the same configuration."""
    import json

    from megatron_reflect.files import write_text_atomic
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
    write_text_atomic(out / f"compare-{other.name}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
