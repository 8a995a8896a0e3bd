"""Reproduction where it can break: one MedSafetyWorld job (data, pretraining, export, SFT,
evaluation) run twice, each in a fresh Python process, at the precision the confirmatory test
registers (bf16 weights with fp32 masters) and with issue 21's design options on, must give
identical figures.  (tests/test_world_experiment.py reruns a job in the same process in fp32.)
About a minute on one core: 40 steps at test size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = """
import dataclasses, json, sys
from megatron_reflect.world.experiment import build_data, quick_experiment, run_job
cfg = quick_experiment(sys.argv[1], seeds=(100,))
cfg = dataclasses.replace(
    cfg, unanchored_sample=32,
    world=dataclasses.replace(cfg.world, tiebreak_reports=8, sft_alternatives=True, novel_safe_queries=4),
    pretrain=dataclasses.replace(cfg.pretrain, train_steps=40, precision="bf16", reset_attention=True),
    sft=dataclasses.replace(cfg.sft, steps=4),
    eval=dataclasses.replace(cfg.eval, cross_check=False, novelty_scores=True))
build_data(cfg, 100)
print(json.dumps(run_job(cfg, 100, "reflect", log=lambda _: None)))
"""


def _fresh_run(out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + JOB, str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_bf16_job_rerun_in_a_fresh_process_reproduces_every_figure(tmp_path: Path) -> None:
    first, again = _fresh_run(tmp_path / "first"), _fresh_run(tmp_path / "second")
    assert first["pretrain"]["final"]["loss"] == again["pretrain"]["final"]["loss"]
    assert first["metrics"] == again["metrics"] and first["metrics_base"] == again["metrics_base"]
    assert "novel_safe.H" in first["metrics"] and first["pretrain"]["unanchored_verdicts"] == 0
    q = [json.loads((tmp_path / d / "seed100" / "reflect" / "queries.json").read_text()) for d in ("first", "second")]
    assert q[0] == q[1]
    ckpt = [sorted((tmp_path / d / "seed100" / "reflect" / "hf_sft").glob("*.safetensors")) for d in ("first", "second")]
    assert ckpt[0] and [p.read_bytes() for p in ckpt[0]] == [p.read_bytes() for p in ckpt[1]]
