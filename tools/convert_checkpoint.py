#!/usr/bin/env python
"""Convert checkpoints between megatron_reflect (Megatron-Core torch_dist) and Hugging Face Llama.

  export  CKPT_DIR OUT_DIR  [--dtype bfloat16] [--tokenizer-dir DIR] [--verify]
      a checkpoint of any TP/PP layout -> LlamaForCausalLM directory (safetensors, config,
      generation config, tokenizer, reflection_format.json)
  import  HF_DIR OUT_DIR    [--tp 2] [--pp 1] [--verify]
      a Llama-family HF directory (SmolLM2, Llama 3) -> checkpoint the trainer can load
      (train config: checkpoint.load=OUT_DIR)

--verify runs both models on a fixed batch of token ids and prints the maximum absolute
logit difference and the greedy-token agreement; the command fails (exit 1) when the
difference is above --tolerance.  Both sides compute in fp32: Hugging Face on the CPU,
Megatron on the GPU when there is one GPU per rank (with TF32 off; MEGATRON_REFLECT_DEVICE=cpu
keeps it on the CPU), else on the CPU (so --tp 2 / --verify-tp 2 work on a one-GPU host).  Bad input exits 2 with a message naming what is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from megatron_reflect.errors import ReflectError  # noqa: E402

DEFAULT_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.5, "float16": 0.1}  # Megatron side on the CPU


def default_tolerance(dtype: str, megatron_device: str) -> float:
    """float32 weights: 1e-4 CPU against CPU, 1e-3 GPU (TF32 off) against CPU; rounded weights: looser."""
    from megatron_reflect.convert.verify import GPU_FP32_TOLERANCE

    if dtype == "float32" and megatron_device == "cuda":
        return GPU_FP32_TOLERANCE
    return DEFAULT_TOLERANCE[dtype]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="direction", required=True)
    for name, src, helptext in (("export", "ckpt_dir", "megatron_reflect checkpoint directory"),
                                ("import", "hf_dir", "Hugging Face model directory (safetensors)")):
        s = sub.add_parser(name, help=f"{name} a checkpoint")
        s.add_argument(src, help=helptext)
        s.add_argument("out_dir", help="output directory (must not exist; written atomically)")
        s.add_argument("--verify", action="store_true", help="compare logits of both models on a fixed batch")
        s.add_argument("--tolerance", type=float, default=None,
                       help="max abs logit difference allowed by --verify (default: 1e-4 for float32 "
                            "weights, 1e-3 when the Megatron side runs on a GPU, 0.5 for bfloat16, 0.1 for float16)")
        s.add_argument("--verify-batch", type=int, nargs=2, default=(2, 16), metavar=("B", "S"),
                       help="size of the fixed verification batch (default 2 16)")
    exp = sub.choices["export"]
    exp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                     help="dtype of the exported weights")
    exp.add_argument("--tokenizer-dir", default=None,
                     help="Hugging Face tokenizer to ship (default: the one in the checkpoint's meta.json)")
    exp.add_argument("--max-shard-gb", type=float, default=2.0, help="maximum safetensors shard size in GiB")
    exp.add_argument("--verify-tp", type=int, default=1, help="tensor-parallel size of the Megatron side of --verify")
    imp = sub.choices["import"]
    imp.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the saved checkpoint")
    imp.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the saved checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from megatron_reflect.convert import export_checkpoint, import_hf
    from megatron_reflect.convert.verify import (
        ParityError,
        compare_logits,
        fixed_batch,
        hf_logits,
        megatron_device,
        megatron_logits,
    )

    try:
        if args.direction == "export":
            out = export_checkpoint(args.ckpt_dir, args.out_dir, dtype=args.dtype, tokenizer_dir=args.tokenizer_dir,
                                    max_shard_bytes=int(args.max_shard_gb * 1024**3))
            ckpt, hf, tp, dtype = args.ckpt_dir, out, args.verify_tp, args.dtype
        else:
            out = import_hf(args.hf_dir, args.out_dir, tp=args.tp, pp=args.pp)
            ckpt, hf, tp, dtype = out, args.hf_dir, args.tp, "float32"
        print(f"wrote {out}")
        if not args.verify:
            return 0
        from megatron_reflect.checkpoint import read_model_config

        tokens = fixed_batch(read_model_config(ckpt).vocab_size, *args.verify_batch)
        where = megatron_device(tp)
        result = compare_logits(megatron_logits(ckpt, tokens, tp=tp), hf_logits(hf, tokens))
        tolerance = args.tolerance if args.tolerance is not None else default_tolerance(dtype, where)
        compute = "fp32, TF32 off" if where == "cuda" else "fp32"
        print(f"verify: {result} (Megatron on {where}, {compute}; Hugging Face on cpu, fp32; "
              f"tolerance {tolerance:g})")
        result.check(tolerance)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ReflectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
