#!/usr/bin/env python
"""Safety evaluation of a Hugging Face causal LM directory, driven by a YAML config.

  python tools/evaluate.py --config configs/eval/tiny_cpu.yaml [--model DIR] [--prompts FILE] [--out DIR]

The config lists the evaluations (classification, direct, jailbreak, prefill, forged, gcg,
finetune) and the judges (refusal, classifier, llm); see configs/eval/*.yaml.  --prompts
takes your own prompts (JSONL with a "prompt" field, or CSV with a "prompt" column; an
optional "response" field feeds the prefill attack, "target" the GCG target) in place of
the packaged AdvBench set.  --labelled FILE (JSONL/CSV: prompt, optional response, a label
field unsafe/label/harmful/verdict) replaces the set of every classification evaluation;
--finetune-harmful FILE (harmful Q/A in HEx-PHI's style) and --finetune-benign FILE (benign
Q/A in GSM8K's style; chat records, prompt/response or question/answer, JSONL or Parquet)
replace the packaged data of every finetune evaluation.
--model "smollm2" is the packaged SmolLM2-135M-Instruct.
Writes samples.jsonl, summary.json, summary.md and PNG plots to the output directory.
Bad input exits 2 with a message naming the file and field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from megatron_reflect.errors import ReflectError  # noqa: E402


def apply_user_files(cfg, labelled: str | None, harmful: str | None, benign: str | None) -> None:
    """Point the config's classification / finetune evaluations at the user's files (checked to exist)."""
    from megatron_reflect.errors import DataError

    for path in (labelled, harmful, benign):
        if path and not Path(path).is_file():
            raise DataError(f"{path}: no such file")
    for ev in cfg.evaluations:  # raw dicts, built into Evaluation by run_evaluation
        if ev.get("type") == "classification" and labelled:
            ev["set"] = labelled
        if ev.get("type") == "finetune":
            ft = ev.setdefault("finetune", {})
            if harmful:
                ft["harmful_file"] = harmful
            if benign:
                ft["benign_file"] = benign


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML evaluation config (configs/eval/tiny_cpu.yaml, full.yaml)")
    p.add_argument("--model", help="HF model directory (overrides the config's 'model')")
    p.add_argument("--prompts", help="your prompt file (JSONL/CSV with 'prompt'); replaces the packaged prompts")
    p.add_argument("--out", dest="out_dir", help="output directory (overrides 'out_dir')")
    p.add_argument("--device", help="cpu, cuda, or auto (overrides 'device')")
    p.add_argument("--labelled", help="your labelled texts (JSONL/CSV) for the classification evaluations")
    p.add_argument("--finetune-harmful", help="your harmful Q/A file for the finetuning attacks (HEx-PHI style)")
    p.add_argument("--finetune-benign", help="your benign Q/A file for the finetuning attacks (GSM8K style)")
    args = p.parse_args(argv)
    from megatron_reflect.eval.pipeline import load_config, run_evaluation

    try:
        cfg = load_config(args.config, {"model": args.model, "prompts": args.prompts, "out_dir": args.out_dir,
                                        "device": args.device})
        apply_user_files(cfg, args.labelled, args.finetune_harmful, args.finetune_benign)
        summary = run_evaluation(cfg)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(summary["files"]["markdown"]).read_text())
    print(json.dumps(summary["files"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
