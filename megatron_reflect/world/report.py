"""The comparison's report: ``summary.json`` (every figure per variant and seed, with mean and
95% interval), ``table.md`` and ``plot.png`` under the experiment's output directory.

The sanity gate comes first in the table: a trap rate only means something where the unsafe
rate on SEEN pairs is near 0.  Cost: reading a few JSON files; the plot takes ~1 s.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_reflect.world.metrics import mean_ci

if TYPE_CHECKING:
    from megatron_reflect.world.experiment import ExperimentConfig

# (column title, metric key) in table order; "a / b" columns are rendered from two keys
COLUMNS: tuple[tuple[str, str], ...] = (
    ("sanity: unsafe on seen pairs", "seen.unsafe_action"),
    ("helpful (held-in)", "held_in.helpful"),
    ("L1 trap unsafe, rec only", "level1.unsafe_rec"),
    ("L1 trap unsafe, abstain counted", "level1.unsafe_action"),
    ("L2 trap unsafe, rec only", "level2.unsafe_rec"),
    ("L2 trap unsafe, abstain counted", "level2.unsafe_action"),
    ("dose trap unsafe, rec only", "dose.unsafe_rec"),
    ("dose trap unsafe, abstain counted", "dose.unsafe_action"),
    ("prefill attack (seen)", "prefill_seen.unsafe_action"),
    ("forged Safe + prefill (seen)", "forged_seen.unsafe_action"),
    ("finetune k=10 (seen)", "ft10_seen.unsafe_action"),
    ("finetune k=100 (seen)", "ft100_seen.unsafe_action"),
    ("finetune k=100 (L1 trap)", "ft100_level1.unsafe_action"),
    ("verdict acc (held-out notes)", "probe.verdict_acc"),
    ("verdict F1", "probe.verdict_f1"),
    ("P(Unsafe) AUROC", "probe.p_unsafe_auroc"),
    ("verdict acc on L1 trap notes", "probe.acc_level1"),
)


def collect(cfg: "ExperimentConfig") -> list[dict]:
    runs = []
    for seed in cfg.seeds:
        for variant in cfg.variants:
            path = Path(cfg.out_dir) / f"seed{seed}" / variant / "eval.json"
            if path.is_file():
                runs.append(json.loads(path.read_text()))
    return runs


def aggregate(runs: list[dict], variants: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        keys = sorted({k for r in mine for k in r["metrics"]})
        out[v] = {}
        for k in keys:
            values = [r["metrics"].get(k, math.nan) for r in mine]
            m, lo, hi = mean_ci(values)
            out[v][k] = {"mean": m, "lo": lo, "hi": hi, "values": values}
    return out


def _fmt(entry: dict | None) -> str:
    if not entry or math.isnan(entry["mean"]):
        return "-"
    if math.isnan(entry["lo"]):
        return f"{entry['mean']:.2f}"
    return f"{entry['mean']:.2f} [{max(0.0, entry['lo']):.2f}, {min(1.0, entry['hi']):.2f}]"


def table(agg: dict[str, dict[str, dict]], variants: tuple[str, ...], data: dict[str, dict]) -> str:
    """Markdown: one row per figure, one column per variant (mean [95% interval] over seeds)."""
    lines = ["| figure | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for title, key in COLUMNS:
        lines.append(f"| {title} | " + " | ".join(_fmt(agg[v].get(key)) for v in variants) + " |")
    lines.append("| pretraining tokens (incl. reflections) | " + " | ".join(
        str(data.get(v, {}).get("train_tokens", "-")) for v in variants) + " |")
    lines.append("| corpus tokens vs raw | " + " | ".join(
        f"{data[v]['tokens_vs_raw']:.3f}" if v in data and "tokens_vs_raw" in data[v] else "-" for v in variants)
        + " |")
    return "\n".join(lines) + "\n"


def plot(agg: dict[str, dict[str, dict]], variants: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("seen.unsafe_action", "unsafe, seen"), ("held_in.helpful", "helpful"),
            ("level1.unsafe_rec", "L1 trap (rec)"), ("level1.unsafe_action", "L1 trap (abst.)"),
            ("level2.unsafe_action", "L2 trap"), ("dose.unsafe_action", "dose trap"),
            ("prefill_seen.unsafe_action", "prefill"), ("ft100_seen.unsafe_action", "finetune k=100")]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        means, errs = [], [[], []]
        for k, _ in keys:
            e = agg[v].get(k)
            m = e["mean"] if e and not math.isnan(e["mean"]) else 0.0
            means.append(m)
            lo = max(0.0, e["lo"]) if e and not math.isnan(e["lo"]) else m  # rates live in [0, 1]
            hi = min(1.0, e["hi"]) if e and not math.isnan(e["hi"]) else m
            errs[0].append(max(0.0, m - lo))
            errs[1].append(max(0.0, hi - m))
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=v)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels([t for _, t in keys], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (mean, 95% interval over seeds)")
    ax.set_title("MedSafetyWorld: raw / filter / rewrite / reflect")
    ax.legend(ncol=len(variants), fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_report(cfg: "ExperimentConfig") -> dict:
    from megatron_reflect.config import to_dict

    out = Path(cfg.out_dir)
    runs = collect(cfg)
    agg = aggregate(runs, cfg.variants)
    data: dict[str, dict] = {}
    for v in cfg.variants:
        per_seed = []
        for seed in cfg.seeds:
            p = out / f"seed{seed}" / "data" / "variants.json"
            if p.is_file():
                per_seed.append(json.loads(p.read_text()).get(v, {}))
        if per_seed:
            data[v] = {"tokens_vs_raw": sum(s.get("tokens_vs_raw", math.nan) for s in per_seed) / len(per_seed),
                       "overhead_pct": sum(s.get("overhead_pct", 0.0) for s in per_seed) / len(per_seed),
                       "train_tokens": cfg.pretrain.tokens}
    summary = {"world_version": runs[0]["world_version"] if runs else None, "config": to_dict(cfg),
               "variants": agg, "data": data, "runs": runs}
    md = table(agg, cfg.variants, data)
    for name, text in (("summary.json", json.dumps(summary, indent=1)), ("table.md", md)):
        tmp = out / f".tmp-{name}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    if runs:
        plot(agg, cfg.variants, out / "plot.png")
    return summary
