#!/usr/bin/env python
"""GPU acceptance check on one H100 (or more): TE build, bf16 and FP8 throughput, export parity.

    python tools/gpu_check.py [--preset smollm2-1.7b] [--steps 50] [--seq 2048] [--micro-batch 2]

1. Transformer Engine: imports, its version, and a TE-spec GPTModel forward in bf16 and FP8.
2. Throughput: ``train()`` on the preset for ``--steps`` steps in bf16, then with FP8
   (tensorwise current scaling), on random tokens held in memory (the data path is not what
   is measured); tokens/s per GPU and MFU = model FLOPs / 989 TFLOP/s (H100 dense BF16)
   over the second half of the steps.  If the preset does not fit, the next smaller
   preset is tried (llama-1.7b-gqa -> smollm2-135m).
3. Export parity: the bf16 run's checkpoint exported to Hugging Face with
   ``tools/convert_checkpoint.py export --verify`` (when that tool is present).

Prints a short table at the end; exits 1 if any part failed.  Runs in a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

FALLBACK = ["smollm2-1.7b", "llama-1.7b-gqa", "smollm2-135m"]


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        text = torch.randint(0, self.vocab, (self.seq + 1,), generator=g)
        return {"tokens": text[:-1], "labels": text[1:], "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq), "reflection_meta": torch.zeros(self.seq, dtype=torch.uint8)}


def te_check() -> str:
    import transformer_engine
    from megatron.core import parallel_state

    from megatron_reflect.model import PrecisionConfig, build_gpt_model, get_preset
    from megatron_reflect.runtime import ParallelConfig, init_runtime, shutdown_runtime

    init_runtime(ParallelConfig())
    try:
        out = []
        for fp8 in ("none", "tensorwise"):
            cfg = dataclasses.replace(get_preset("tiny"), layer_spec="te", hidden_size=128, num_attention_heads=4,
                                      ffn_hidden_size=256)
            model = build_gpt_model(cfg, ParallelConfig(), PrecisionConfig(dtype="bf16", fp8=fp8))
            tokens = torch.randint(0, 256, (2, 64), device="cuda")
            with torch.no_grad():
                logits = model(tokens, torch.arange(64, device="cuda").expand(2, 64), None)
            assert torch.isfinite(logits.float()).all()
            out.append(f"{fp8}:ok")
        assert parallel_state.model_parallel_is_initialized()
        return f"transformer_engine {transformer_engine.__version__}; TE-spec forward {' '.join(out)}"
    finally:
        shutdown_runtime()


def throughput(preset: str, fp8: str, steps: int, seq: int, mbs: int, run_dir: Path) -> dict:
    from megatron_reflect.config import resolve
    from megatron_reflect.model import get_preset
    from megatron_reflect.train.loop import train
    from megatron_reflect.train.recipes import get_recipe

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    gbs = mbs * 2 * world
    cfg = resolve(get_recipe("smollm2-1.7b"), None, [
        f"run_dir={run_dir}", f"data.seq_length={seq}", f"schedule.micro_batch_size={mbs}",
        f"schedule.global_batch_size={gbs}", f"schedule.train_steps={steps}", "schedule.warmup_steps=5",
        "schedule.eval_interval=0", f"logging.log_interval={steps // 2}", "logging.tensorboard=false",
        "checkpoint.save_interval=0", f"checkpoint.save_at_end={'true' if fp8 == 'none' else 'false'}",
        "checkpoint.resume=false", "precision.dtype=bf16", f"precision.fp8={fp8}"])
    model = get_preset(preset)
    cfg = dataclasses.replace(cfg, model=model)
    start = time.perf_counter()
    result = train(cfg, datasets=(RandomTokens(steps * gbs, seq, model.vocab_size), None),
                   info={"tokenizer": {"vocab_size": model.vocab_size}})
    final = result.final
    return {"preset": preset, "precision": "bf16" if fp8 == "none" else f"fp8-{fp8}",
            "tokens_per_s_per_gpu": final["tokens_per_s"] / world, "tflops_per_gpu": final.get("tflops_per_gpu"),
            "mfu": final.get("mfu"), "loss": result.losses[-1], "wall_s": time.perf_counter() - start,
            "checkpoint": result.last_checkpoint}


def export_parity(ckpt: Path, out: Path) -> str:
    tool = Path(__file__).with_name("convert_checkpoint.py")
    if not tool.is_file():
        return "skipped (tools/convert_checkpoint.py not present)"
    proc = subprocess.run([sys.executable, str(tool), "export", str(ckpt), str(out), "--verify"],
                          capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return f"exit {proc.returncode}: " + " / ".join(tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smollm2-1.7b")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here", file=sys.stderr)
        return 2
    rows: list[tuple[str, str]] = [("device", f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}")]
    failed = False
    try:
        rows.append(("TE build", te_check()))
    except Exception:  # noqa: BLE001 - reported in the table, the other checks still run
        rows.append(("TE build", "FAILED: " + traceback.format_exc().strip().splitlines()[-1]))
        failed = True
    presets = FALLBACK[FALLBACK.index(args.preset):] if args.preset in FALLBACK else [args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        for fp8 in ("none", "tensorwise"):
            for preset in presets:
                try:
                    r = throughput(preset, fp8, args.steps, args.seq, args.micro_batch, Path(tmp) / f"{preset}-{fp8}")
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append((f"{preset} {fp8}", "out of memory; trying a smaller preset"))
                    continue
                except Exception:  # noqa: BLE001
                    rows.append((f"{preset} {fp8}", "FAILED: " + traceback.format_exc().strip().splitlines()[-1]))
                    failed = True
                    break
                rows.append((f"{r['preset']} {r['precision']}",
                             f"{r['tokens_per_s_per_gpu']:,.0f} tok/s/GPU, {r['tflops_per_gpu']:.0f} TFLOP/s/GPU, "
                             f"MFU {100 * r['mfu']:.1f}% (seq {args.seq}, mbs {args.micro_batch}, "
                             f"loss {r['loss']:.3f}, {r['wall_s']:.0f} s)"))
                ckpt = ckpt or r["checkpoint"]
                presets = [preset]  # FP8 on the preset that fitted in bf16
                break
        if ckpt is not None:
            rows.append(("export parity", export_parity(ckpt, Path(tmp) / "hf")))
            failed |= not rows[-1][1].startswith(("exit 0", "skipped"))
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}} | {v}" for k, v in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
