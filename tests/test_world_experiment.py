"""The quick end-to-end MedSafetyWorld comparison: world -> four variants through the pipeline
-> pretraining with the project's trainer -> HF export -> SFT -> exact evaluation -> report;
then a re-run that skips every completed stage."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from megatron_reflect.world.experiment import quick_experiment, run_experiment
from megatron_reflect.world.report import COLUMNS


def test_quick_experiment_end_to_end_and_resume(tmp_path: Path) -> None:
    cfg = quick_experiment(str(tmp_path / "msw"))
    lines: list[str] = []
    summary = run_experiment(cfg, log=lines.append)
    out = Path(cfg.out_dir)
    assert set(summary["variants"]) == {"raw", "filter", "rewrite", "reflect"}
    runs = {r["variant"]: r for r in summary["runs"]}
    # identical budgets: same steps and tokens; every model learned something
    assert {r["pretrain"]["steps"] for r in runs.values()} == {cfg.pretrain.train_steps}
    assert {r["pretrain"]["tokens"] for r in runs.values()} == {cfg.pretrain.tokens}
    for r in runs.values():
        assert r["pretrain"]["final"]["loss"] < r["pretrain"]["first_loss"] - 1.0
        m = r["metrics"]
        for key in ("seen.unsafe_action", "held_in.helpful", "level1.unsafe_rec", "level2.unsafe_action",
                    "dose.unsafe_action", "prefill_seen.unsafe_action", "forged_seen.unsafe_action",
                    "ft10_seen.unsafe_action"):
            assert 0.0 <= m[key] <= 1.0, key
        assert m["level1.unsafe_action"] <= m["level1.unsafe_rec"]
    # only the reflect model has a reflection probe, and its reflection loss was trained
    assert "probe.p_unsafe_auroc" in runs["reflect"]["metrics"]
    assert "probe.verdict_acc" not in runs["raw"]["metrics"]
    assert math.isfinite(runs["reflect"]["pretrain"]["final"]["reflection_loss"])
    assert math.isnan(runs["raw"]["pretrain"]["final"]["reflection_loss"] or math.nan)
    # the reflection overhead is measured on the real datasets
    variants = json.loads((out / "seed0" / "data" / "variants.json").read_text())
    assert variants["reflect"]["overhead_pct"] > 10 and variants["raw"]["reflection_tokens"] == 0
    assert variants["filter"]["filtered_documents"] == round(cfg.world.unsafe_fraction * cfg.world.num_case_notes)
    # report files
    table = (out / "table.md").read_text()
    assert all(title in table for title, _ in COLUMNS)
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["world_version"] == "1.0"
    # re-running skips every completed stage
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed0/*/eval.json")}
    t0 = time.time()
    again = run_experiment(cfg, log=lines.append)
    assert time.time() - t0 < 20
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed0/*/eval.json")} == stamps
    assert again["variants"]["raw"]["held_in.helpful"]["values"] == summary["variants"]["raw"]["held_in.helpful"][
        "values"]
