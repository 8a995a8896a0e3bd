"""THE seam between data and model: one forward step and its reflection-aware loss.

Everything the trainer knows about reflections is in this file.  A batch carries
``reflection_meta`` (uint8, aligned with ``labels``; codes in :mod:`megatron_reflect.reflection`).
GPTModel is given the labels and returns the per-token cross entropy, as in Megatron-LM:
megatron-core computes it on the vocabulary-parallel logits in their own [s, b, v] layout
(over the TP group when the vocabulary is split), so the logits are never transposed to
[b, s, v] and copied (three full copies per microbatch, forward and backward: b x s x V
values each, 0.8 GB in bf16 for 4 x 2048 tokens at SmolLM2's 49 k vocabulary).  The loss
here weights that per-token cross entropy: reflection tokens by ``reflection_loss_weight``
(1.0 as in SRP; 0.0 keeps reflections as context only).  It also reports, at no extra cost:

* ``text_loss`` and ``reflection_loss`` (mean cross entropy over each kind of token),
* verdict accuracy: the share of verdict tokens where the model gives the inserted verdict
  word more than half its probability (cross entropy below ln 2, so it is also the argmax),
  separately for Safe, Unsafe and Controversial reflections - a safety-classification probe
  running throughout pretraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import torch

from megatron_reflect.reflection import KIND_MASK, KIND_OF_VERDICT, VERDICT_FLAG, Verdict

LN2 = math.log(2.0)  # verdict 'correct': more than half the probability on the inserted word

# Names of the summed statistics in a step report; each is a [sum, count] pair.
REPORT_KEYS = ("loss", "text_loss", "reflection_loss", "verdict_acc_safe", "verdict_acc_unsafe",
               "verdict_acc_controversial")


@dataclass
class LossConfig:
    reflection_loss_weight: float = 1.0


def _pair(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([total.detach().float().reshape(()), count.detach().float().reshape(())])


def reflection_loss(
    cfg: LossConfig,
    per_token: torch.Tensor,
    loss_mask: torch.Tensor,
    meta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Loss over one microbatch.

    ``per_token`` [B, S]: the cross entropy of each label, as GPTModel returns it when given
    labels; ``loss_mask``, ``meta`` [B, S].  Returns (weighted loss sum, number of tokens with
    weight > 0, report of [sum, count] pairs): the contract of megatron-core's pipeline
    schedules (they divide by the token count).
    """
    meta = meta.to(torch.int32)
    loss_mask = loss_mask.float()
    per_token = per_token.float()
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
    # Masks and sums only: boolean indexing would sync the host with the GPU for every
    # selection (its output size depends on the data).
    verdict_pos = ((meta & VERDICT_FLAG) != 0) & (loss_mask > 0)
    correct = (per_token.detach() < LN2) & verdict_pos
    kinds = meta & KIND_MASK
    for verdict in Verdict:
        sel = verdict_pos & (kinds == KIND_OF_VERDICT[verdict])
        report[f"verdict_acc_{verdict.value.lower()}"] = _pair((correct & sel).sum(), sel.sum())
    return loss_sum, num_tokens, report


def _loss_func(cfg: LossConfig, batch: dict[str, torch.Tensor], per_token: torch.Tensor):
    return reflection_loss(cfg, per_token, batch["loss_mask"], batch["reflection_meta"])


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
    stage uses tokens and positions, the last one labels (GPTModel returns their per-token
    cross entropy), loss mask and reflection metadata.
    """
    batch = batch_to_device(next(data_iterator), device)
    # A causal mask is implied; GPTDataset's explicit [B, 1, S, S] mask (True = masked) comes only with
    # DataConfig.reset_attention_mask (attention reset at every EOD) and is then passed on.
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])
    return output, partial(_loss_func, cfg, batch)


def make_forward_step(cfg: LossConfig, device: torch.device) -> Callable:
    return partial(forward_step, cfg, device)
