#!/usr/bin/env python
"""GPU acceptance check: what a person with a GPU runs once (``tools/gpu_check.sh`` calls this).

    tools/gpu_check.sh [--preset smollm2-1.7b] [--steps 30] [--seq 2048] [--micro-batch 2]

Rows of the table it prints, each ok / FAILED / SKIPPED (exit 1 unless every row is ok):

1. device: GPU name and count, torch and CUDA versions.
2. Transformer Engine: its version, and a TE-spec GPTModel forward in bf16 and FP8.
3. ``<preset> bf16``: ``train()`` for ``--steps`` steps on random tokens held in memory (the
   data path is not what is measured), with the packaged SmolLM2 tokenizer's description
   as the dataset info; tokens/s per GPU, TFLOP/s and MFU (model FLOPs over the device's
   dense BF16 peak) over the second half of the steps; it saves a weights-only checkpoint
   (``checkpoint.save_optimizer=false``) for the export row.
4. ``<preset> bf16, fusions off``: the same without TE's fused RoPE, gradient-accumulation
   fusion and the softmax / SwiGLU / bias-dropout fusions, and the speed-up they give.
5. ``<preset> fp8-tensorwise``: the same with FP8 (tensorwise current scaling).
6. memory: what is still allocated after each run is freed (gc + ``empty_cache``); a run
   that leaves more than 1 GiB behind fails.
7. export parity: ``tools/convert_checkpoint.py export --dtype bfloat16 --verify`` of the
   bf16 checkpoint (an exact copy of its bf16 weights); both sides compute in fp32, the
   Megatron side on the GPU with TF32 off, Hugging Face on the CPU (tolerance 1e-3).
8. with >= 2 GPUs: ``torchrun`` DP=2 smoke run of ``tools/train.py`` (smollm2-135m) on a
   dataset made by ``tools/preprocess_data.py``: 4 steps straight, and 2 steps + exit +
   resume; the resumed losses must follow the straight run's.

Out of memory anywhere is a failure; when the preset does not fit, a preset with at most
half its parameters is also tried, so the table still shows numbers (but the exit is 1).
Expected time on one H100/H200: about 5-6 minutes (most of it model builds, the
checkpoint export and the CPU side of the parity check); ~2 minutes more with >= 2 GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
# Dense BF16 tensor-core peaks (FLOP/s), the MFU denominators; FP8 runs are reported against BF16 too.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "H800": 989e12, "B200": 2250e12,
                   "B100": 1750e12, "A100": 312e12, "L40S": 362e12}
LEFTOVER_LIMIT_BYTES = 1 << 30
EXPORT_TOLERANCE = 1e-3  # fp32 GPU (TF32 off) against fp32 CPU; see convert/verify.py


@dataclasses.dataclass
class Row:
    name: str
    status: str  # "ok" | "FAILED" | "SKIPPED"
    detail: str


def render(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.name:<{width}} | {r.status:<7} | {r.detail}" for r in rows)


def exit_code(rows: list[Row]) -> int:
    """0 only when every row is ok: a failed or a skipped check fails the command."""
    return 0 if rows and all(r.status == "ok" for r in rows) else 1


def peak_flops(device_name: str) -> tuple[float, str]:
    """The BF16 peak for an MFU figure, and which GPU it is the peak of."""
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in device_name.upper().replace("NVIDIA ", ""):
            return peak, key
    return PEAK_BF16_FLOPS["H100"], "H100 (device not in the table)"


def fallback_preset(name: str) -> str | None:
    """The largest preset with at most half the parameters of ``name`` (None if there is none)."""
    from megatron_reflect.model import PRESETS

    size = PRESETS[name]().num_parameters()
    smaller = [(PRESETS[n]().num_parameters(), n) for n in PRESETS if PRESETS[n]().num_parameters() * 2 <= size]
    return max(smaller)[1] if smaller else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def throughput_config(preset: str, fp8: str, steps: int, seq: int, mbs: int, world: int, run_dir: Path,
                      fusions: bool = True, save: bool = False):
    """The train config of one throughput run (validated by the caller's ``train``)."""
    from megatron_reflect.config import resolve
    from megatron_reflect.model import get_preset
    from megatron_reflect.train.recipes import get_recipe

    cfg = resolve(get_recipe("smollm2-1.7b"), None, [
        f"run_dir={run_dir}", f"data.seq_length={seq}", f"schedule.micro_batch_size={mbs}",
        f"schedule.global_batch_size={mbs * 2 * world}", f"schedule.train_steps={steps}",
        f"schedule.warmup_steps={min(5, steps)}", "schedule.eval_interval=0",
        f"logging.log_interval={max(1, steps // 2)}", "logging.tensorboard=false",
        "checkpoint.save_interval=0", f"checkpoint.save_at_end={str(save).lower()}",
        "checkpoint.save_optimizer=false", "checkpoint.resume=false", "precision.dtype=bf16",
        f"precision.fp8={fp8}", f"precision.fusions={str(fusions).lower()}"])
    return dataclasses.replace(cfg, model=get_preset(preset))


class RandomTokens(torch.utils.data.Dataset):
    """Deterministic random samples in the trainer's batch format."""

    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        text = torch.randint(0, self.vocab, (self.seq + 1,), generator=g)
        return {"tokens": text[:-1], "labels": text[1:], "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq), "reflection_meta": torch.zeros(self.seq, dtype=torch.uint8)}


def tokenizer_info() -> dict[str, Any]:
    """The dataset info a real dataset would carry: the packaged SmolLM2 tokenizer's description."""
    from megatron_reflect.data.tokenizers import build_tokenizer

    return {"tokenizer": build_tokenizer("hf").describe()}


def free_memory() -> int:
    """Collect garbage and return cached blocks; bytes still allocated afterwards."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def te_check() -> str:
    import transformer_engine

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
            with torch.no_grad():  # megatron's TransformerBlock enters TE's FP8 autocast itself
                logits = model(tokens, torch.arange(64, device="cuda").expand(2, 64), None)
            if not torch.isfinite(logits.float()).all():
                raise FloatingPointError(f"TE-spec forward ({fp8}) gave non-finite logits")
            out.append(f"{'bf16' if fp8 == 'none' else 'fp8'} forward ok")
            del model, logits
        return f"transformer_engine {transformer_engine.__version__}; " + ", ".join(out)
    finally:
        shutdown_runtime()


def throughput(cfg, vocab: int, info: dict[str, Any], peak: float) -> dict[str, Any]:
    from megatron_reflect.train.loop import train

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    s = cfg.schedule
    start = time.perf_counter()
    result = train(cfg, datasets=(RandomTokens(s.train_steps * s.global_batch_size, cfg.data.seq_length, vocab), None),
                   info=info)
    final = result.final
    per_gpu = final["tokens_per_s"] / world
    tflops = cfg.model.flops_per_token(cfg.data.seq_length) * per_gpu
    return {"tokens_per_s_per_gpu": per_gpu, "tflops": tflops / 1e12, "mfu": tflops / peak,
            "loss": result.losses[-1], "wall_s": time.perf_counter() - start, "checkpoint": result.last_checkpoint}


def describe_run(r: dict[str, Any], seq: int, mbs: int) -> str:
    return (f"{r['tokens_per_s_per_gpu']:,.0f} tok/s/GPU, {r['tflops']:.0f} TFLOP/s/GPU, MFU {100 * r['mfu']:.1f}% "
            f"(seq {seq}, mbs {mbs}, final loss {r['loss']:.3f}, {r['wall_s']:.0f} s)")


def export_parity(ckpt: Path, out: Path, dtype: str = "bfloat16") -> Row:
    """Export ``ckpt`` with the CLI and verify it (bf16: an exact copy of a bf16 run's weights)."""
    cmd = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "export", str(ckpt), str(out),
           "--dtype", dtype, "--verify", "--tolerance", str(EXPORT_TOLERANCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    verify = [line for line in lines if line.startswith(("verify:", "error:"))]
    detail = (verify[-1] if verify else " / ".join(lines[-3:])) + f" (exit {proc.returncode})"
    return Row("export parity (bf16 -> HF)", "ok" if proc.returncode == 0 else "FAILED", detail)


SMOKE_SENTENCES = [
    "The river rises in the hills and reaches the sea after a long journey through farmland.",
    "Students measured the length of the shadow every hour to estimate the height of the tower.",
    "A balanced diet includes vegetables, fruit, whole grains and enough water every day.",
    "The committee met on Tuesday to discuss the budget for the new library building.",
    "Light travels faster than sound, which is why lightning is seen before thunder is heard.",
    "The recipe asks for two cups of flour, one egg and a pinch of salt.",
]


def _metrics(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def dp2_smoke(tmp: Path, timeout_s: int = 600) -> Row:
    """torchrun DP=2 on a preprocessed dataset: a straight run, and a run stopped and resumed."""
    import random

    corpus = tmp / "smoke.jsonl"
    rng = random.Random(0)
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(600):
            f.write(json.dumps({"id": str(i), "text": " ".join(rng.choices(SMOKE_SENTENCES, k=8))}) + "\n")
    prefix = tmp / "smoke_data" / "reflect"
    steps = [[sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", str(corpus), "--output-prefix",
              str(prefix), "--labeler", "classifier", "--mode", "reflect", "--no-progress"]]
    common = ["--recipe", "smollm2-135m", f"data.blend=[{prefix}]", "data.seq_length=512", "data.split=100,0,0",
              "schedule.train_steps=4", "schedule.micro_batch_size=2", "schedule.global_batch_size=4",
              "schedule.warmup_steps=1", "schedule.eval_interval=0", "checkpoint.save_interval=2",
              "logging.log_interval=1", "logging.tensorboard=false", "data.num_workers=2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(ROOT / "tools" / "train.py")]
    steps += [torchrun + common + [f"run_dir={tmp / 'straight'}"],
              torchrun + common + [f"run_dir={tmp / 'resumed'}", "schedule.exit_interval=2"],
              torchrun + common + [f"run_dir={tmp / 'resumed'}"]]
    env = dict(os.environ, OMP_NUM_THREADS="4")
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        if proc.returncode != 0:
            tail = " / ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            shown = " ".join(cmd[:6])
            return Row("torchrun DP=2 save + resume", "FAILED", f"`{shown} ...` exit {proc.returncode}: {tail}")
    straight, resumed = _metrics(tmp / "straight"), _metrics(tmp / "resumed")
    diffs = [abs(straight[s] - resumed[s]) for s in (3, 4)]
    ok = sorted(resumed) == [1, 2, 3, 4] and max(diffs) < 1e-2
    return Row("torchrun DP=2 save + resume", "ok" if ok else "FAILED",
               f"losses straight {[round(straight[s], 4) for s in sorted(straight)]}, stopped at 2 + resumed "
               f"{[round(resumed[s], 4) for s in sorted(resumed)]} (max |diff| after resume {max(diffs):.2e})")


def run_check(rows: list[Row], name: str, fn: Callable[[], str]) -> bool:
    try:
        rows.append(Row(name, "ok", fn()))
        return True
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other checks still run
        reason = "out of memory" if is_oom(exc) else traceback.format_exc().strip().splitlines()[-1]
        rows.append(Row(name, "FAILED", reason))
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smollm2-1.7b", help="model preset to measure")
    parser.add_argument("--steps", type=int, default=30, help="training steps per throughput run (>= 1)")
    parser.add_argument("--seq", type=int, default=2048, help="sequence length")
    parser.add_argument("--micro-batch", type=int, default=2, help="micro batch size (2 microbatches per step)")
    parser.add_argument("--work-dir", default=None, help="keep checkpoints, export and logs here (default: a "
                        "temporary directory, removed when every check passed)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    os.environ["MEGATRON_REFLECT_DEVICE"] = "cuda"  # a stray "cpu" must not turn the check into a CPU run
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible here", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak, peak_of = peak_flops(name)
    count = torch.cuda.device_count()
    rows = [Row("device", "ok", f"{name} x{count}, torch {torch.__version__}, CUDA {torch.version.cuda}; MFU against "
                              f"{peak / 1e12:.0f} TFLOP/s ({peak_of} dense BF16)")]
    te_ok = run_check(rows, "Transformer Engine", te_check)
    free_memory()
    info = tokenizer_info()
    vocab = int(info["tokenizer"]["vocab_size"])
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    leftovers: list[tuple[str, int]] = []  # (run, bytes still allocated after it was freed)

    def measured(preset: str, label: str, fp8: str, fusions: bool, save: bool) -> tuple[dict[str, Any] | None, bool]:
        """(the run's figures or None, whether it ran out of memory); adds its rows."""
        slug = label.replace(",", "").replace(" ", "-")
        cfg = throughput_config(preset, fp8, args.steps, args.seq, args.micro_batch, 1, work / f"{preset}-{slug}",
                                fusions=fusions, save=save)
        row_name = f"{preset} {label}"
        r, oom = None, False
        try:
            r = throughput(cfg, vocab, info, peak)
            rows.append(Row(row_name, "ok", describe_run(r, args.seq, args.micro_batch)))
        except Exception as exc:  # noqa: BLE001 - reported in the table, the other checks still run
            oom = is_oom(exc)
            rows.append(Row(row_name, "FAILED", "out of memory" if oom
                            else traceback.format_exc().strip().splitlines()[-1]))
        leftovers.append((row_name, free_memory()))
        return r, oom

    preset = args.preset
    bf16, oom = measured(preset, "bf16", "none", True, save=True)
    smaller = fallback_preset(preset) if oom else None
    if smaller is not None:  # numbers for a model that fits; the failed row still fails the check
        preset = smaller
        bf16, _ = measured(preset, "bf16", "none", True, save=True)
    if bf16 is None:
        rows.append(Row(f"{preset} bf16, fusions off", "SKIPPED", "the bf16 run failed"))
    else:
        off, _ = measured(preset, "bf16, fusions off", "none", False, save=False)
        if off is not None:
            rows[-1].detail += f"; fusions give x{bf16['tokens_per_s_per_gpu'] / off['tokens_per_s_per_gpu']:.3f}"
    if te_ok:
        measured(preset, "fp8-tensorwise", "tensorwise", True, save=False)
    else:
        rows.append(Row(f"{preset} fp8-tensorwise", "SKIPPED", "Transformer Engine failed"))
    worst = max(left for _, left in leftovers)
    rows.append(Row("memory freed between runs", "ok" if worst <= LEFTOVER_LIMIT_BYTES else "FAILED",
                    "still allocated after each run: " + ", ".join(f"{n} {b / 2**30:.2f} GiB" for n, b in leftovers)))
    if bf16 is not None and bf16["checkpoint"] is not None:
        try:
            rows.append(export_parity(bf16["checkpoint"], work / "hf"))
        except Exception:  # noqa: BLE001
            rows.append(Row("export parity (bf16 -> HF)", "FAILED", traceback.format_exc().strip().splitlines()[-1]))
    else:
        rows.append(Row("export parity (bf16 -> HF)", "SKIPPED", "no bf16 checkpoint"))
    note = ""
    if count >= 2:
        try:
            rows.append(dp2_smoke(work / "dp2"))
        except Exception:  # noqa: BLE001
            rows.append(Row("torchrun DP=2 save + resume", "FAILED", traceback.format_exc().strip().splitlines()[-1]))
    else:
        note = "\n(one GPU: the torchrun DP=2 save + resume check needs two and was not part of this run)"
    print("\n" + render(rows) + note)
    code = exit_code(rows)
    if code == 0 and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints and the export: several GB
    else:
        print(f"\nwork directory (checkpoints, export, logs): {work}")
    return code


if __name__ == "__main__":
    sys.exit(main())
