"""Step statistics: reduction across ranks, log lines, metrics.jsonl and TensorBoard.

The loss seam (train/step.py) returns ``[sum, count]`` pairs per microbatch on the last
pipeline stage.  :func:`reduce_reports` sums them over microbatches, the pipeline group
(other stages contribute zeros) and the data-parallel group, so every rank ends up with
the global figures at the cost of two tiny all-reduces.  The reduction runs on the
groups' device (CUDA under NCCL, which has no CPU tensors) and only its result is moved
to the host.  Rank 0 writes one JSON object
per logged step to ``<run_dir>/metrics.jsonl`` (the file ``tools/plot_metrics.py``
reads) and the same scalars to TensorBoard; TensorBoard is imported only when enabled.
A run that resumes at step N first drops the records of steps after N (written by the
run that was killed after its last checkpoint, and about to be written again), so the file
holds each step once; TensorBoard hides them too (``purge_step``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_reflect.files import write_text_atomic
from megatron_reflect.train.step import REPORT_KEYS

def reduce_reports(reports: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum ``[sum, count]`` pairs over microbatches and ranks; return means (NaN where count is 0).

    ``device``: where the collectives run (the runtime's device: ``cuda`` with NCCL).
    """
    from megatron.core import parallel_state

    if reports:
        total = torch.stack([torch.stack([r[key] for key in REPORT_KEYS]) for r in reports]).sum(0)
        total = total.detach().to(device, torch.float64)
    else:  # a pipeline stage without the loss
        total = torch.zeros(len(REPORT_KEYS), 2, dtype=torch.float64, device=device)
    if dist.is_initialized():
        # Only the last stage has reports, and every TP rank of it holds the same values:
        # sum over PP, then over DP.
        for group in (parallel_state.get_pipeline_model_parallel_group(), parallel_state.get_data_parallel_group()):
            if group.size() > 1:
                dist.all_reduce(total, group=group)
    pairs = total.cpu().tolist()
    return {key: (s / n if n > 0 else math.nan) for key, (s, n) in zip(REPORT_KEYS, pairs)}


def format_line(step: int, total_steps: int, values: dict[str, float]) -> str:
    """One concise log line; verdict accuracies and GPU figures only when present."""
    parts = [f"step {step}/{total_steps}", f"loss {values['loss']:.4f}"]
    if not math.isnan(values.get("reflection_loss", math.nan)):
        parts.append(f"text {values['text_loss']:.4f} refl {values['reflection_loss']:.4f}")
    acc = [f"{name[0].upper()} {values[f'verdict_acc_{name}']:.2f}" for name in ("safe", "unsafe", "controversial")
           if not math.isnan(values.get(f"verdict_acc_{name}", math.nan))]
    if acc:
        parts.append("verdict acc " + " ".join(acc))
    parts.append(f"lr {values['lr']:.3g}")
    if "grad_norm" in values:
        parts.append(f"gnorm {values['grad_norm']:.3f}")
    parts.append(f"{values['tokens_per_s']:,.0f} tok/s")
    if "tflops_per_gpu" in values:
        parts.append(f"{values['tflops_per_gpu']:.1f} TFLOP/s/GPU")
    if "mfu" in values:
        parts.append(f"MFU {100 * values['mfu']:.1f}%" + (f" ({100 * values['mfu_fp8_peak']:.1f}% of FP8 peak)"
                                                          if "mfu_fp8_peak" in values else ""))
    return " | ".join(parts)


class MetricsWriter:
    """metrics.jsonl + TensorBoard on rank 0; nothing on other ranks."""

    def __init__(self, run_dir: str | Path, enabled: bool, jsonl: bool = True, tensorboard: bool = True,
                 start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if jsonl:
            self._drop_after(start_step)
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def _drop_after(self, step: int) -> None:
        """Rewrite metrics.jsonl without records of steps > ``step`` (atomically; a torn last line goes too)."""
        if not self.path.is_file():
            return
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                keep = json.loads(line)["step"] <= step
            except (ValueError, KeyError, TypeError):
                keep = False  # the unfinished line of a killed writer
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "split": split}
        record.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()})
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if not math.isnan(value):
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
