"""THE seam between data and model: one forward step and its reflection-aware loss.

Everything the trainer knows about reflections is in this file.  A batch carries
``reflection_meta`` (uint8, aligned with ``labels``; codes in :mod:`megatron_reflect.reflection`).
The loss is next-token cross entropy where reflection tokens are weighted by
``reflection_loss_weight`` (1.0 as in SRP; 0.0 keeps reflections as context only).  It
also reports, at no extra forward cost:

* ``text_loss`` and ``reflection_loss`` (mean cross entropy over each kind of token),
* verdict accuracy: whether the argmax at a verdict token equals the inserted verdict
  word, separately for Safe, Unsafe and Controversial reflections - a safety-classification
  probe running throughout pretraining.

Logits may be split over the vocabulary by tensor parallelism; the cross entropy and the
argmax test are computed on the shards with two all-reduces over the TP group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import torch

from megatron_reflect.reflection import KIND_MASK, KIND_OF_VERDICT, VERDICT_FLAG, Verdict

# Names of the summed statistics in a step report; each is a [sum, count] pair.
REPORT_KEYS = ("loss", "text_loss", "reflection_loss", "verdict_acc_safe", "verdict_acc_unsafe",
               "verdict_acc_controversial")


@dataclass
class LossConfig:
    reflection_loss_weight: float = 1.0


def _pair(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([total.detach().float().reshape(()), count.detach().float().reshape(())])


def label_is_argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For rows of vocab-parallel ``logits`` [N, V/tp], whether ``labels`` [N] is the argmax."""
    from megatron.core import parallel_state

    if logits.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=logits.device)
    logits = logits.float()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    vocab_local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * vocab_local
    local_max = logits.max(dim=-1).values
    in_shard = (labels >= start) & (labels < start + vocab_local)
    idx = (labels - start).clamp(0, vocab_local - 1)
    label_logit = torch.where(in_shard, logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1), torch.zeros_like(local_max))
    if tp > 1:
        group = parallel_state.get_tensor_model_parallel_group()
        torch.distributed.all_reduce(local_max, op=torch.distributed.ReduceOp.MAX, group=group)
        torch.distributed.all_reduce(label_logit, group=group)
    return label_logit >= local_max


def reflection_loss(
    cfg: LossConfig,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    meta: torch.Tensor,
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Loss over one microbatch.

    ``logits`` [B, S, V/tp] as GPTModel returns them; ``labels``, ``loss_mask``, ``meta`` [B, S].
    Returns (weighted loss sum, number of tokens with weight > 0, report of [sum, count] pairs):
    the contract of megatron-core's pipeline schedules (they divide by the token count).
    """
    from megatron.core import tensor_parallel

    meta = meta.to(torch.int32)
    loss_mask = loss_mask.float()
    per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)
    is_refl = ((meta & KIND_MASK) != 0).float() * loss_mask
    is_text = loss_mask - is_refl
    weight = is_text + cfg.reflection_loss_weight * is_refl
    num_tokens = (weight > 0).sum().to(torch.int)
    loss_sum = (per_token * weight).sum()

    report = {
        "loss": _pair(loss_sum, num_tokens),
        "text_loss": _pair((per_token * is_text).sum(), is_text.sum()),
        "reflection_loss": _pair((per_token * is_refl).sum(), is_refl.sum()),
    }
    verdict_pos = ((meta & VERDICT_FLAG) != 0) & (loss_mask > 0)
    correct = label_is_argmax(logits[verdict_pos], labels[verdict_pos]).float()
    kinds = meta[verdict_pos] & KIND_MASK
    for verdict in Verdict:
        sel = kinds == KIND_OF_VERDICT[verdict]
        report[f"verdict_acc_{verdict.value.lower()}"] = _pair(correct[sel].sum(), sel.sum())
    return loss_sum, num_tokens, report


def _loss_func(cfg: LossConfig, batch: dict[str, torch.Tensor], logits: torch.Tensor):
    return reflection_loss(cfg, batch["labels"], batch["loss_mask"], batch["reflection_meta"], logits)


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Move the keys the step uses to ``device`` (every rank loads its own batch)."""
    out = {}
    for key in ("tokens", "labels", "loss_mask", "position_ids", "reflection_meta", "attention_mask"):
        if key in batch and batch[key] is not None:
            out[key] = batch[key].to(device, non_blocking=True)
    if "reflection_meta" not in out:
        out["reflection_meta"] = torch.zeros_like(out["labels"], dtype=torch.uint8)
    return out


def forward_step(cfg: LossConfig, device: torch.device, data_iterator: Iterator[dict[str, Any]],
                 model: torch.nn.Module) -> tuple[torch.Tensor, Callable]:
    """megatron-core's forward_step_func: run the model on the next microbatch.

    Every pipeline stage reads the same microbatch (every rank loads data); the first
    stage uses tokens and positions, the last one labels, loss mask and reflection metadata.
    """
    batch = batch_to_device(next(data_iterator), device)
    # A causal mask is implied; GPTDataset's explicit [1, S, S] mask is not needed.
    output = model(batch["tokens"], batch["position_ids"], None)
    return output, partial(_loss_func, cfg, batch)


def make_forward_step(cfg: LossConfig, device: torch.device) -> Callable:
    return partial(forward_step, cfg, device)
