"""Optimizer, learning-rate schedules (WSD, cosine) and model-parallel gradient clipping.

Two optimizer paths behind one small interface (``step() -> grad norm``):

* GPU: megatron-core's ``get_megatron_optimizer`` over megatron DDP (distributed
  optimizer, bf16 master weights in fp32, clipping inside), imported only when CUDA is
  present;
* CPU: ``torch.optim.AdamW`` plus :func:`clip_grad_norm` below, because megatron's
  optimizer wrappers and clipping allocate on CUDA (research/megatron-core-on-cpu.md).
  With bf16 parameters it steps fp32 master copies, as megatron's mixed-precision
  optimizer does on the GPU (:class:`TorchOptimizer`).

The schedule is a pure function of the step (:func:`lr_at`), so resuming needs nothing
but the step number, and the LR is written into the param groups before each step.
Norms and biases get no weight decay on both paths: the CPU groups say so directly
(:func:`param_groups`); megatron's groups carry a ``wd_mult`` (0 for 1-D parameters and
biases) that only its ``OptimizerParamScheduler`` turns into ``weight_decay``, so the GPU
path writes ``weight_decay = optim.weight_decay x wd_mult`` into them with the LR
(:func:`apply_group_hyperparameters`); left alone, every group would decay at the
optimizer's default.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist

from megatron_reflect.train.config import OptimConfig, ScheduleConfig


def lr_at(step: int, optim: OptimConfig, schedule: ScheduleConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    lr, min_lr, total = optim.lr, optim.min_lr, schedule.train_steps
    warmup = schedule.warmup_steps
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule.lr_schedule == "constant":
        return lr
    if schedule.lr_schedule == "cosine":
        span = max(total - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # WSD: warmup, stable at lr, decay over the last decay_fraction of the run.
    decay_steps = int(round(schedule.decay_fraction * total))
    decay_start = total - decay_steps
    if decay_steps == 0 or step < decay_start:
        return lr
    progress = min((step - decay_start + 1) / decay_steps, 1.0)
    if schedule.decay_style == "linear":
        factor = 1.0 - progress
    elif schedule.decay_style == "1-sqrt":
        factor = 1.0 - math.sqrt(progress)
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (lr - min_lr) * factor


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.dim() < 2 or name.endswith(".bias")


def param_groups(model_chunks: list[torch.nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for chunk in model_chunks:
        for name, p in chunk.named_parameters():
            if p.requires_grad:
                (no_decay if _no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


GradOf = Callable[[torch.nn.Parameter], "torch.Tensor | None"]


def _grad(p: torch.nn.Parameter) -> torch.Tensor | None:
    return p.grad


def _owned_grads(model_chunks: list[torch.nn.Module], grad_of: GradOf = _grad) -> list[torch.Tensor]:
    """Gradients this rank contributes to the global norm (each value counted once).

    ``grad_of`` maps a model parameter to the gradient that is stepped (its fp32 master's
    under bf16 on the CPU)."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    grads = []
    for chunk in model_chunks:
        tied_copy = None
        if getattr(chunk, "share_embeddings_and_output_weights", False) and not getattr(chunk, "pre_process", True):
            tied_copy = chunk.shared_embedding_or_output_weight()
        for p in chunk.parameters():
            grad = grad_of(p)
            if grad is None or p is tied_copy:
                continue
            if tp_rank > 0 and not getattr(p, "tensor_model_parallel", False):
                continue
            grads.append(grad)
    return grads


@torch.no_grad()
def grad_norm(model_chunks: list[torch.nn.Module], grad_of: GradOf = _grad) -> torch.Tensor:
    """Global L2 norm of the gradients across TP and PP ranks (DP replicas hold equal grads).

    Tensor-parallel shards are summed over the TP group, replicated parameters (norms)
    counted once, and the tied output weight of the last pipeline stage skipped (it is a
    copy of the first stage's embedding), as megatron's own clipping does.
    """
    from megatron.core import parallel_state

    grads = _owned_grads(model_chunks, grad_of)
    local = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
    squared = local.double().square()
    if dist.is_initialized() and dist.get_world_size() > 1:
        group = parallel_state.get_model_parallel_group()
        if group.size() > 1:
            dist.all_reduce(squared, group=group)
    return squared.sqrt()


@torch.no_grad()
def clip_grad_norm(model_chunks: list[torch.nn.Module], max_norm: float, grad_of: GradOf = _grad) -> float:
    """Scale all gradients so the global norm is at most ``max_norm``; returns the norm before."""
    norm = float(grad_norm(model_chunks, grad_of))
    coef = max_norm / (norm + 1e-6)
    if max_norm > 0 and coef < 1.0:  # no pass over the gradients when they are within bounds
        grads = [g for chunk in model_chunks for p in chunk.parameters() if (g := grad_of(p)) is not None]
        torch._foreach_mul_(grads, coef)
    return norm


class Optimizer(Protocol):
    """What the loop needs from either optimizer path."""

    def zero_grad(self) -> None: ...
    def set_lr(self, lr: float) -> None: ...
    def step(self) -> float: ...  # returns the gradient norm before clipping
    def reload_model_params(self) -> None: ...  # fp32 masters from the (just loaded) model weights


class TorchOptimizer:
    """CPU path: torch AdamW over the local shards, model-parallel-aware clipping.

    Parameters below fp32 (``precision.dtype=bf16``) are stepped through fp32 master copies,
    as megatron's mixed-precision optimizer does on the GPU: each step copies their gradients
    up, clips and applies them in fp32, and copies the weights back down, so updates far
    smaller than a bf16 weight's rounding step still accumulate.  The masters are part of
    the optimizer state a checkpoint saves.  On an AVX512-BF16 CPU the world's 2 x 64 model
    trains 1.5x faster than in fp32 (``benchmarks/bench_world_budget.py --precision fp32,bf16``).
    """

    def __init__(self, model_chunks: list[torch.nn.Module], cfg: OptimConfig) -> None:
        self.model_chunks = model_chunks
        self.clip = cfg.clip_grad
        groups = param_groups(model_chunks, cfg.weight_decay)
        self._params = [p for g in groups for p in g["params"]]  # model parameters, in the state's order
        self.master = {p: p.detach().float().requires_grad_(True) for p in self._params if p.dtype != torch.float32}
        for g in groups:
            g["params"] = [self.master.get(p, p) for p in g["params"]]
        # foreach: one multi-tensor kernel per state tensor kind instead of a Python loop over
        # parameters (torch only picks it by default for CUDA tensors); same maths.
        self.inner = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True)

    def _stepped_grad(self, p: torch.nn.Parameter) -> torch.Tensor | None:
        return self.master[p].grad if p in self.master else p.grad

    def zero_grad(self) -> None:
        self.inner.zero_grad(set_to_none=True)
        for p in self.master:
            p.grad = None

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def step(self) -> float:
        for p, m in self.master.items():
            m.grad = None if p.grad is None else p.grad.float()
        norm = clip_grad_norm(self.model_chunks, self.clip, self._stepped_grad)
        self.inner.step()
        for p, m in self.master.items():
            p.copy_(m)
        return norm

    def params(self) -> list[torch.nn.Parameter]:
        """The model parameters the optimizer steps, in its state's order."""
        return self._params

    def state_of(self, p: torch.nn.Parameter) -> dict[str, torch.Tensor]:
        """AdamW's state for model parameter ``p`` (kept on its fp32 master when it has one)."""
        return self.inner.state[self.master.get(p, p)]

    def reload_model_params(self) -> None:
        """Masters from the model's weights, after those were loaded (megatron's name for it)."""
        with torch.no_grad():
            for p, m in self.master.items():
                m.copy_(p)

    def init_state(self) -> None:
        """Create AdamW's moment buffers (zeros) so a checkpoint can be loaded into them."""
        for p in self._params:
            state = self.state_of(p)
            if not state:
                stepped = self.master.get(p, p)
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(stepped, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(stepped, memory_format=torch.preserve_format)


def apply_group_hyperparameters(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> None:
    """Write the step's LR and each group's weight decay into megatron-style param groups.

    ``lr_mult`` / ``wd_mult`` are megatron's per-group multipliers (``get_megatron_optimizer``
    sets ``wd_mult=0`` for norms and biases); groups without them (torch's) count as 1.
    """
    for group in groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


def megatron_optimizer_config(cfg: OptimConfig, bf16: bool, distributed: bool = True):
    """megatron's OptimizerConfig for the GPU path (Adam, fp32 main weights of bf16 parameters)."""
    from megatron.core.optimizer import OptimizerConfig

    return OptimizerConfig(optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
                           adam_beta1=cfg.beta1, adam_beta2=cfg.beta2, adam_eps=cfg.eps, clip_grad=cfg.clip_grad,
                           bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                           use_distributed_optimizer=distributed)


class MegatronOptimizer:
    """GPU path: megatron's (distributed) optimizer; clipping and the norm come from it."""

    def __init__(self, model_chunks: list[torch.nn.Module], cfg: OptimConfig, bf16: bool,
                 distributed: bool = True) -> None:
        from megatron.core.optimizer import get_megatron_optimizer

        self.inner = get_megatron_optimizer(megatron_optimizer_config(cfg, bf16, distributed), model_chunks)
        self.weight_decay = cfg.weight_decay
        apply_group_hyperparameters(self.inner.param_groups, cfg.lr, cfg.weight_decay)

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def set_lr(self, lr: float) -> None:
        # the weight decay too: loading an optimizer state replaces the groups' values
        apply_group_hyperparameters(self.inner.param_groups, lr, self.weight_decay)

    def step(self) -> float:
        _, norm, _ = self.inner.step()
        return float(norm) if norm is not None else float("nan")

    def reload_model_params(self) -> None:
        """fp32 main weights from the model's, after those were loaded."""
        self.inner.reload_model_params()
