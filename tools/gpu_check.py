#!/usr/bin/env python
"""GPU acceptance check: what a person with a GPU runs once (``tools/gpu_check.sh`` calls this).

    tools/gpu_check.sh [--preset smollm2-1.7b] [--steps 10] [--seq 2048] [--micro-batch 4]
                       [--microbatches 16] [--peak-tflops X] [--tokenizer-dir DIR] [--work-dir DIR]

Two tiers.  With Transformer Engine every row runs; without it (a bare CUDA host with only
torch and the wheels of ``tools/gpu_bundle.sh``) every row that needs no TE runs, and the
TE rows say "Transformer Engine not installed".  Rows, each ok / FAILED / SKIPPED / no TE:

1. device: GPU name and count, torch and CUDA versions, the MFU peak (from the device name,
   or ``--peak-tflops``).
2. kernels: the layer spec (TE, or megatron's local spec with SDPA core attention), and
   whether weight-gradient accumulation is fused, per layer type.
3. Transformer Engine: its version, and a TE-spec GPTModel forward in bf16 and FP8.
4. ``<preset> bf16``: ``train()`` (megatron DDP, distributed optimizer, overlapped grad
   reduce and param gather) for ``--steps`` steps of ``--micro-batch`` x ``--microbatches``
   sequences (the real recipe's per-GPU shape, so the optimizer's fixed per-step cost is
   amortised as in training) on random tokens held in memory; tokens/s per GPU, TFLOP/s and
   MFU (Megatron-Bridge / NeMo FLOPs over the dense BF16 peak) over the second half of the
   steps; it saves a weights-only checkpoint for the export row.
5. ``<preset> bf16, fusions off`` (TE): the same without the fusions, and the speed-up they give.
6. ``<preset> fp8-tensorwise`` (TE): FP8 current scaling, MFU against the BF16 and the FP8 peak.
7. save + resume: smollm2-135m trained 4 steps straight, and 2 steps + exit + resume from
   its distributed checkpoint (optimizer state included); the resumed losses must equal the
   straight run's.
8. memory: what is still allocated after each run is freed (gc + ``empty_cache``); a run
   that leaves more than 1 GiB behind fails.
9. export parity: ``tools/convert_checkpoint.py export --dtype bfloat16 --verify`` of the
   bf16 checkpoint; both sides compute in fp32, the Megatron side on the GPU with TF32 off,
   Hugging Face on the CPU (tolerance 1e-3).
10. with >= 2 GPUs: ``torchrun`` DP=2 run of ``tools/train.py`` (smollm2-135m) on a dataset
    made by ``tools/preprocess_data.py``: 4 steps straight, and 2 steps + exit + resume.

Exit: 0 every row ok; 3 every row ok except the TE rows (no Transformer Engine here); 1 a row
failed or was skipped; 2 no GPU.  Out of memory anywhere is a failure; when the preset does
not fit, a preset with at most half its parameters is also tried, so the table still shows
numbers (but the exit is 1).  Expected time on one H100/H200: about 5 minutes with TE,
about 3 without (model builds, the checkpoint export and the CPU side of the parity check
dominate); ~2 minutes more with >= 2 GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's package, also where it is not installed (a bare host)

LEFTOVER_LIMIT_BYTES = 1 << 30
EXPORT_TOLERANCE = 1e-3  # fp32 GPU (TF32 off) against fp32 CPU; see convert/verify.py
RESUME_TOLERANCE = 1e-2  # loss difference after a resume (same GPU, same kernels; atomics in attention backward)
EXPORT_TIMEOUT_S = 1800
NO_TE = "no TE"  # the status of a row that needs Transformer Engine where it is not installed
NO_TE_DETAIL = "Transformer Engine not installed"
EXIT_OK, EXIT_FAILED, EXIT_NO_GPU, EXIT_OK_WITHOUT_TE = 0, 1, 2, 3


@dataclasses.dataclass
class Row:
    name: str
    status: str  # "ok" | "FAILED" | "SKIPPED" | NO_TE
    detail: str


def render(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.name:<{width}} | {r.status:<7} | {r.detail}" for r in rows)


def exit_code(rows: list[Row]) -> int:
    """0: every row ok; 3: ok but the Transformer Engine rows; 1: any row failed or was skipped."""
    if not rows or any(r.status not in ("ok", NO_TE) for r in rows) or all(r.status == NO_TE for r in rows):
        return EXIT_FAILED
    return EXIT_OK_WITHOUT_TE if any(r.status == NO_TE for r in rows) else EXIT_OK


def te_installed() -> bool:
    from megatron_reflect.model.provider import te_available

    return te_available()


def fallback_preset(name: str) -> str | None:
    """The largest preset with at most half the parameters of ``name`` (None if there is none)."""
    from megatron_reflect.model import PRESETS

    size = PRESETS[name]().num_parameters()
    smaller = [(PRESETS[n]().num_parameters(), n) for n in PRESETS if PRESETS[n]().num_parameters() * 2 <= size]
    return max(smaller)[1] if smaller else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def throughput_config(preset: str, fp8: str, steps: int, seq: int, mbs: int, microbatches: int, world: int,
                      run_dir: Path, fusions: bool = True, save: bool = False):
    """The train config of one throughput run (validated by the caller's ``train``)."""
    from megatron_reflect.config import resolve
    from megatron_reflect.model import get_preset
    from megatron_reflect.train.recipes import get_recipe

    cfg = resolve(get_recipe("smollm2-1.7b"), None, [
        f"run_dir={run_dir}", f"data.seq_length={seq}", f"schedule.micro_batch_size={mbs}",
        f"schedule.global_batch_size={mbs * microbatches * world}", f"schedule.train_steps={steps}",
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


def tokenizer_info(tokenizer_dir: str | None = None) -> dict[str, Any]:
    """The dataset info a real dataset would carry: the SmolLM2 tokenizer's description (packaged,
    or the files of ``tokenizer_dir``, e.g. the ones ``tools/gpu_bundle.sh`` carries)."""
    from megatron_reflect.data.tokenizers import build_tokenizer

    return {"tokenizer": build_tokenizer("hf", tokenizer_dir).describe()}


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


def throughput(cfg, vocab: int, info: dict[str, Any], peak) -> dict[str, Any]:
    """Train ``cfg`` on random tokens; its figures (``peak``: a :class:`~megatron_reflect.train.mfu.Peak` or None)."""
    from megatron_reflect.train.loop import train
    from megatron_reflect.train.mfu import mfu

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    s = cfg.schedule
    start = time.perf_counter()
    result = train(cfg, datasets=(RandomTokens(s.train_steps * s.global_batch_size, cfg.data.seq_length, vocab), None),
                   info=info)
    final = result.final
    per_gpu = final["tokens_per_s"] / world
    flops = cfg.model.flops_per_token(cfg.data.seq_length) * per_gpu
    return {"tokens_per_s_per_gpu": per_gpu, "tflops": flops / 1e12, **mfu(flops, peak, cfg.precision.fp8 != "none"),
            "loss": result.losses[-1], "wall_s": time.perf_counter() - start, "checkpoint": result.last_checkpoint}


def describe_run(r: dict[str, Any], seq: int, mbs: int, microbatches: int) -> str:
    share = "no MFU: unknown GPU, pass --peak-tflops" if "mfu" not in r else f"MFU {100 * r['mfu']:.1f}%" + (
        f" of BF16 peak, {100 * r['mfu_fp8_peak']:.1f}% of FP8 peak" if "mfu_fp8_peak" in r else "")
    return (f"{r['tokens_per_s_per_gpu']:,.0f} tok/s/GPU, {r['tflops']:.0f} TFLOP/s/GPU, {share} "
            f"(seq {seq}, {microbatches} x mbs {mbs}, final loss {r['loss']:.3f}, {r['wall_s']:.0f} s)")


def resume_check(work: Path, vocab: int, info: dict[str, Any], preset: str = "smollm2-135m", seq: int = 512,
                 steps: int = 4) -> str:
    """``steps`` straight, and ``steps // 2`` + exit + resume from the checkpoint; the losses must agree."""
    from megatron_reflect.train.loop import train

    def cfg(run_dir: Path, exit_interval: int):
        c = throughput_config(preset, "none", steps, seq, 2, 2, 1, run_dir, save=True)
        c.logging.log_interval = 1
        c.checkpoint.resume = True
        c.checkpoint.save_optimizer = True
        c.schedule.exit_interval = exit_interval
        return c

    data = (RandomTokens(steps * 4, seq, vocab), None)
    straight = train(cfg(work / "straight", 0), datasets=data, info=info).losses
    first = train(cfg(work / "resumed", steps // 2), datasets=data, info=info)
    rest = train(cfg(work / "resumed", 0), datasets=data, info=info)
    resumed = first.losses + rest.losses
    if len(resumed) != steps or rest.steps != steps:
        raise RuntimeError(f"resume ran {len(first.losses)} + {len(rest.losses)} steps, expected {steps}")
    diff = max(abs(a - b) for a, b in zip(straight, resumed))
    if not diff < RESUME_TOLERANCE:
        raise RuntimeError(f"losses straight {[round(x, 4) for x in straight]} but resumed "
                           f"{[round(x, 4) for x in resumed]} (max |diff| {diff:.2e})")
    return (f"{preset}: straight {[round(x, 4) for x in straight]}, stopped at {steps // 2} and resumed from "
            f"{first.last_checkpoint.name} {[round(x, 4) for x in resumed]} (max |diff| {diff:.2e})")


def run_bounded(cmd: list[str], timeout_s: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run`` in its own process group, all of which is killed on timeout (torchrun's workers too).

    The command sees this repository's package first on ``PYTHONPATH`` (it need not be installed)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\ntimed out after {timeout_s} s (process group killed)"
        return subprocess.CompletedProcess(cmd, 124, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def export_parity(ckpt: Path, out: Path, dtype: str = "bfloat16", timeout_s: int = EXPORT_TIMEOUT_S) -> Row:
    """Export ``ckpt`` with the CLI and verify it (bf16: an exact copy of a bf16 run's weights)."""
    cmd = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "export", str(ckpt), str(out),
           "--dtype", dtype, "--verify", "--tolerance", str(EXPORT_TOLERANCE)]
    proc = run_bounded(cmd, timeout_s)
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


def dp2_smoke(tmp: Path, tokenizer_dir: str | None, timeout_s: int = 600) -> Row:
    """torchrun DP=2 on a preprocessed dataset: a straight run, and a run stopped and resumed.

    The dataset is made in plain mode (no labeler: a bare host has no classifier model); the
    run checks data parallelism, saving and resuming, not reflections."""
    import random

    corpus = tmp / "smoke.jsonl"
    rng = random.Random(0)
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(600):
            f.write(json.dumps({"id": str(i), "text": " ".join(rng.choices(SMOKE_SENTENCES, k=8))}) + "\n")
    prefix = tmp / "smoke_data" / "reflect"
    steps = [[sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", str(corpus), "--output-prefix",
              str(prefix), "--mode", "plain", "--no-progress"]
             + (["--tokenizer-model", tokenizer_dir] if tokenizer_dir else [])]
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
        proc = run_bounded(cmd, timeout_s, env)
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


def kernels_row(te: bool) -> Row:
    """Which layer spec and attention the runs use, and the weight-gradient fusion per layer type."""
    from megatron_reflect.model import PrecisionConfig
    from megatron_reflect.model.provider import wgrad_fusion_plan

    spec = "te" if te else "local"
    plan = wgrad_fusion_plan(spec, PrecisionConfig(dtype="bf16"), main_grads=True)
    fused = ", ".join(f"{layer} {'on' if on else 'off'}" for layer, on in plan.items())
    attention = "Transformer Engine layers" if te else "megatron local spec, torch SDPA core attention"
    return Row("kernels", "ok", f"{attention}; fused wgrad accumulation: {fused}; fused cross entropy on")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smollm2-1.7b", help="model preset to measure")
    parser.add_argument("--steps", type=int, default=10, help="training steps per throughput run (>= 1)")
    parser.add_argument("--seq", type=int, default=2048, help="sequence length")
    parser.add_argument("--micro-batch", type=int, default=4, help="micro batch size (the 1.7B recipe's: 4)")
    parser.add_argument("--microbatches", type=int, default=16,
                        help="microbatches per step and GPU (>= 16 amortises the optimizer step as training does)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense BF16 peak of the GPU in TFLOP/s for MFU (default: from the device name)")
    parser.add_argument("--tokenizer-dir", default=None, help="Hugging Face tokenizer files (default: the packaged "
                        "SmolLM2 tokenizer; tools/gpu_bundle.sh carries them as <bundle>/tokenizer)")
    parser.add_argument("--work-dir", default=None, help="keep checkpoints, export and logs here (default: a "
                        "temporary directory, removed when every check passed)")
    args = parser.parse_args(argv)
    for name in ("steps", "micro_batch", "microbatches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.peak_tflops < 0:
        parser.error("--peak-tflops must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["MEGATRON_REFLECT_DEVICE"] = "cuda"  # a stray "cpu" must not turn the check into a CPU run
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible here (torch.cuda.is_available() is False)", file=sys.stderr)
        return EXIT_NO_GPU
    from megatron_reflect.train.mfu import peak_for

    name = torch.cuda.get_device_name()
    peak = peak_for(name, args.peak_tflops)
    count = torch.cuda.device_count()
    against = ("no MFU: GPU not in the peak table, pass --peak-tflops" if peak is None else
               f"MFU against {peak.bf16 / 1e12:.0f} TFLOP/s dense BF16"
               + (f" and {peak.fp8 / 1e12:.0f} FP8" if peak.fp8 else "") + f" ({peak.device})")
    rows = [Row("device", "ok", f"{name} x{count}, torch {torch.__version__}, CUDA {torch.version.cuda}; {against}")]
    te = te_installed()
    rows.append(kernels_row(te))
    te_ok = run_check(rows, "Transformer Engine", te_check) if te else False
    if not te:
        rows.append(Row("Transformer Engine", NO_TE, NO_TE_DETAIL))
    free_memory()
    info = tokenizer_info(args.tokenizer_dir)
    vocab = int(info["tokenizer"]["vocab_size"])
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    leftovers: list[tuple[str, int]] = []  # (run, bytes still allocated after it was freed)

    def measured(preset: str, label: str, fp8: str, fusions: bool, save: bool) -> tuple[dict[str, Any] | None, bool]:
        """(the run's figures or None, whether it ran out of memory); adds its rows."""
        slug = label.replace(",", "").replace(" ", "-")
        cfg = throughput_config(preset, fp8, args.steps, args.seq, args.micro_batch, args.microbatches, 1,
                                work / f"{preset}-{slug}", fusions=fusions, save=save)
        cfg.logging.peak_tflops = args.peak_tflops
        row_name = f"{preset} {label}"
        r, oom = None, False
        try:
            r = throughput(cfg, vocab, info, peak)
            rows.append(Row(row_name, "ok", describe_run(r, args.seq, args.micro_batch, args.microbatches)))
        except Exception as exc:  # noqa: BLE001 - reported in the table, the other checks still run
            oom = is_oom(exc)
            rows.append(Row(row_name, "FAILED", "out of memory" if oom
                            else traceback.format_exc().strip().splitlines()[-1]))
        leftovers.append((row_name, free_memory()))
        return r, oom

    preset = args.preset
    bf16_label = "bf16" if te else "bf16 (local spec)"
    bf16, oom = measured(preset, bf16_label, "none", True, save=True)
    smaller = fallback_preset(preset) if oom else None
    if smaller is not None:  # numbers for a model that fits; the failed row still fails the check
        preset = smaller
        bf16, _ = measured(preset, bf16_label, "none", True, save=True)
    if not te:
        rows.append(Row(f"{preset} bf16, fusions off", NO_TE, NO_TE_DETAIL))
    elif bf16 is None:
        rows.append(Row(f"{preset} bf16, fusions off", "SKIPPED", "the bf16 run failed"))
    else:
        off, _ = measured(preset, "bf16, fusions off", "none", False, save=False)
        if off is not None:
            rows[-1].detail += f"; fusions give x{bf16['tokens_per_s_per_gpu'] / off['tokens_per_s_per_gpu']:.3f}"
    if not te:
        rows.append(Row(f"{preset} fp8-tensorwise", NO_TE, NO_TE_DETAIL))
    elif te_ok:
        measured(preset, "fp8-tensorwise", "tensorwise", True, save=False)
    else:
        rows.append(Row(f"{preset} fp8-tensorwise", "SKIPPED", "the Transformer Engine check failed"))
    run_check(rows, "save + resume (distributed checkpoint)", lambda: resume_check(work / "resume", vocab, info))
    leftovers.append(("save + resume", free_memory()))
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
            rows.append(dp2_smoke(work / "dp2", args.tokenizer_dir))
        except Exception:  # noqa: BLE001
            rows.append(Row("torchrun DP=2 save + resume", "FAILED", traceback.format_exc().strip().splitlines()[-1]))
    else:
        note = "\n(one GPU: the torchrun DP=2 save + resume check needs two and was not part of this run)"
    code = exit_code(rows)
    verdict = {EXIT_OK: "all ok", EXIT_OK_WITHOUT_TE: "ok without Transformer Engine (exit 3)",
               EXIT_FAILED: "FAILED (exit 1)"}[code]
    print("\n" + render(rows) + note + f"\n\ngpu_check: {verdict}")
    if code == EXIT_OK and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints and the export: several GB
    else:
        print(f"work directory (checkpoints, export, logs): {work}")
    return code


if __name__ == "__main__":
    sys.exit(main())
