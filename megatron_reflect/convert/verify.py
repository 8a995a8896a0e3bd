"""Parity checks: run a Megatron checkpoint and a Hugging Face directory on the same batch.

A conversion is only trusted when both models give the same logits; this module computes
them (Megatron on ``tp`` local ranks, gathered over the vocabulary; Hugging Face in fp32 on
this process's CPU) and compares: maximum absolute logit difference and greedy-token
agreement.  Cost: one forward of each model on a small batch, plus loading both (the
Megatron side runs in spawned processes so this process's state is untouched).

Both sides compute in fp32 whatever the stored dtype (bf16 weights are exact in fp32).  On
a GPU the Megatron side runs with TF32 off (``NVIDIA_TF32_OVERRIDE=0`` for cuBLAS and
Transformer Engine, and torch's TF32 switches), so the comparison is fp32 against fp32;
what remains is the summation order of GPU against CPU kernels, hence the looser default
tolerance for that case (:data:`GPU_FP32_TOLERANCE`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_reflect.errors import ConversionError
from megatron_reflect.runtime.device import device_for_world

GPU_FP32_TOLERANCE = 1e-3  # fp32 (TF32 off) GPU kernels against fp32 CPU kernels, 24+ layers


def megatron_device(tp: int = 1) -> str:
    """Where :func:`megatron_logits` runs the Megatron side at TP ``tp``: ``cuda`` (TF32 off, one GPU
    per rank) or ``cpu`` (no GPU, ``MEGATRON_REFLECT_DEVICE=cpu``, or fewer GPUs than ``tp``)."""
    return device_for_world(tp)


class ParityError(ConversionError):
    """The two models' logits differ by more than the tolerance."""


@dataclass(frozen=True)
class LogitComparison:
    max_abs_diff: float
    greedy_agreement: float  # fraction of positions whose argmax token is the same
    positions: int

    def __str__(self) -> str:
        return (f"max |logit diff| = {self.max_abs_diff:.3e}, greedy-token agreement = "
                f"{100 * self.greedy_agreement:.2f}% of {self.positions} positions")

    def check(self, tolerance: float) -> None:
        if not self.max_abs_diff <= tolerance:  # also catches NaN
            raise ParityError(f"logits differ: {self} (tolerance {tolerance:g})")


def fixed_batch(vocab_size: int, batch: int = 2, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """A deterministic batch of token ids (the same for every run of a check)."""
    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> LogitComparison:
    if reference.shape != candidate.shape:
        raise ConversionError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    ref, cand = reference.double(), candidate.double()
    agree = (ref.argmax(-1) == cand.argmax(-1)).double()
    return LogitComparison(float((ref - cand).abs().max()), float(agree.mean()), int(agree.numel()))


@torch.no_grad()
def hf_logits(hf_dir: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the Hugging Face model in ``hf_dir`` (loaded in fp32), shape [B, S, vocab]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    return model(input_ids=tokens).logits.float()


@torch.no_grad()
def _megatron_logits_rank(ckpt_dir: str, tokens: torch.Tensor, tp: int) -> torch.Tensor | None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_reflect.checkpoint import load_model_weights, read_model_config
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.runtime import ParallelConfig, init_runtime

    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    rt = init_runtime(parallel)
    if rt.device.type == "cuda":  # fp32 means fp32 (NVIDIA_TF32_OVERRIDE=0 is set for cuBLAS / TE too)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = read_model_config(ckpt_dir)
    model = build_gpt_model(cfg, parallel, init_weights=False)  # weights come from the checkpoint
    load_model_weights(ckpt_dir, [model])
    model.eval()
    batch, seq = tokens.shape
    positions = torch.arange(seq).expand(batch, seq)
    logits = model(tokens.to(rt.device), positions.to(rt.device), None).float()
    if tp > 1:
        parts = [torch.empty_like(logits) for _ in range(tp)]
        dist.all_gather(parts, logits.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)
    return logits[..., : cfg.vocab_size].cpu() if rt.rank == 0 else None


def megatron_logits(ckpt_dir: str | Path, tokens: torch.Tensor, tp: int = 1) -> torch.Tensor:
    """Logits of the checkpoint's GPTModel run at tensor-parallel size ``tp`` (any saved layout)."""
    from megatron_reflect.runtime.launch import run_distributed

    previous = os.environ.get("NVIDIA_TF32_OVERRIDE")
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # read by cuBLAS in the spawned ranks: no TF32 GEMMs
    try:
        results = run_distributed(_megatron_logits_rank, tp, str(ckpt_dir), tokens, tp,
                                  threads_per_rank=max(1, (os.cpu_count() or 1) // tp), device=megatron_device(tp))
    finally:
        if previous is None:
            os.environ.pop("NVIDIA_TF32_OVERRIDE")
        else:
            os.environ["NVIDIA_TF32_OVERRIDE"] = previous
    return results[0]
