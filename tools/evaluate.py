#!/usr/bin/env python
"""Safety evaluation of a Hugging Face causal LM directory, driven by a YAML config.

  python tools/evaluate.py --config configs/eval/tiny_cpu.yaml [--model DIR] [--prompts FILE] [--out DIR]

The config lists the evaluations (classification, direct, jailbreak, prefill, forged, gcg,
finetune) and the judges (refusal, classifier, llm); see configs/eval/*.yaml.  --prompts
takes your own prompts (JSONL with a "prompt" field, or CSV with a "prompt" column; an
optional "response" field feeds the prefill attack, "target" the GCG target) in place of
the packaged AdvBench set.  --model "smollm2" is the packaged SmolLM2-135M-Instruct.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML evaluation config (configs/eval/tiny_cpu.yaml, full.yaml)")
    p.add_argument("--model", help="HF model directory (overrides the config's 'model')")
    p.add_argument("--prompts", help="your prompt file (JSONL/CSV with 'prompt'); replaces the packaged prompts")
    p.add_argument("--out", dest="out_dir", help="output directory (overrides 'out_dir')")
    p.add_argument("--device", help="cpu, cuda, or auto (overrides 'device')")
    args = p.parse_args(argv)
    from megatron_reflect.eval.pipeline import load_config, run_evaluation

    try:
        cfg = load_config(args.config, {"model": args.model, "prompts": args.prompts, "out_dir": args.out_dir,
                                        "device": args.device})
        summary = run_evaluation(cfg)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(summary["files"]["markdown"]).read_text())
    print(json.dumps(summary["files"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
