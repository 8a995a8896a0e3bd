#!/usr/bin/env python
"""Draw a run's loss and verdict-accuracy curves from its metrics.jsonl to a PNG.

    python tools/plot_metrics.py runs/tiny-cpu            # writes runs/tiny-cpu/metrics.png
    python tools/plot_metrics.py runs/a runs/b -o cmp.png  # several runs on the same axes

Left: training loss, text loss and reflection loss (solid/dashed/dotted) and validation
loss (markers).  Right: online verdict accuracy at Safe / Unsafe / Controversial verdict
tokens.  A resumed run may have logged a step twice; the last record of a step wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_reflect.errors import DataError, ReflectError


def read_metrics(path: Path) -> dict[str, dict[int, dict]]:
    """``{"train": {step: record}, "valid": {...}}`` from a metrics.jsonl file (or its run dir)."""
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no metrics.jsonl here")
    splits: dict[str, dict[int, dict]] = {"train": {}, "valid": {}}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                splits.setdefault(record.get("split", "train"), {})[int(record["step"])] = record
            except (json.JSONDecodeError, KeyError, ValueError) as exc:
                raise DataError(f"{path}:{line_no}: not a metrics record ({exc})") from None
    return splits


def _series(records: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = [s for s in sorted(records) if records[s].get(key) is not None]
    return steps, [records[s][key] for s in steps]


def plot(runs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        splits = read_metrics(run)
        name = run.name if run.is_dir() else run.parent.name
        line = None
        for key, style in (("loss", "-"), ("text_loss", "--"), ("reflection_loss", ":")):
            steps, values = _series(splits["train"], key)
            if steps:
                kwargs = {"color": line.get_color()} if line is not None else {}
                (drawn,) = ax_loss.plot(steps, values, style, label=f"{name} {key}", **kwargs)
                line = line or drawn
        steps, values = _series(splits["valid"], "loss")
        if steps:
            ax_loss.plot(steps, values, "o", color=line.get_color() if line else None, label=f"{name} valid loss")
        for key, style in (("verdict_acc_safe", "-"), ("verdict_acc_unsafe", "--"),
                           ("verdict_acc_controversial", ":")):
            steps, values = _series(splits["train"], key)
            if steps:
                ax_acc.plot(steps, values, style, color=line.get_color() if line else None,
                            label=f"{name} {key.removeprefix('verdict_acc_')}")
    ax_loss.set(xlabel="step", ylabel="cross entropy (nats/token)", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="verdict accuracy (p(verdict word) > 1/2)",
               ylim=(-0.02, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics.jsonl files)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="PNG to write (default: <first run>/metrics.png)")
    args = parser.parse_args(argv)
    first = args.runs[0] if args.runs[0].is_dir() else args.runs[0].parent
    try:
        out = plot(args.runs, args.output or first / "metrics.png")
    except ReflectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
