"""Gradient synchronisation for the plain-torch (CPU) optimizer path.

On a GPU, megatron's DDP and ``finalize_model_grads`` do this; they are CUDA-only, so
without CUDA the trainer reduces gradients itself: the tied word embedding between the
first and last pipeline stage (megatron keeps two copies that must receive the same
update), then an average over the data-parallel group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _tied_embedding_weight(model: torch.nn.Module) -> torch.nn.Parameter | None:
    if not getattr(model, "share_embeddings_and_output_weights", False):
        return None
    return model.shared_embedding_or_output_weight()


def _sync_tied_embedding(model_chunks: list[torch.nn.Module]) -> None:
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1 and parallel_state.is_rank_in_embedding_group():
        for chunk in model_chunks:
            weight = _tied_embedding_weight(chunk)
            if weight is not None and weight.grad is not None:
                dist.all_reduce(weight.grad, group=parallel_state.get_embedding_group())
                break


def _all_reduce_flat(grads: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    """Sum ``grads`` over ``group`` with one collective, in fp32 (bf16 grads too, as megatron DDP's
    ``grad_reduce_in_fp32`` does)."""
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def allreduce_grads_cpu(model_chunks: list[torch.nn.Module]) -> None:
    from megatron.core import parallel_state

    _sync_tied_embedding(model_chunks)
    dp = parallel_state.get_data_parallel_world_size()
    if dp > 1:
        grads = [p.grad for m in model_chunks for p in m.parameters() if p.grad is not None]
        _all_reduce_flat(grads, parallel_state.get_data_parallel_group())
        for g in grads:
            g.div_(dp)


def finalize_grads_cpu(model_chunks: list[torch.nn.Module], num_tokens: torch.Tensor | None = None,
                       pg_collection: object | None = None, force_all_reduce: bool = False) -> None:
    """megatron's ``finalize_model_grads_func`` contract for the CPU path.

    The pipeline schedules call it after the last backward.  With ``num_tokens`` (set when
    ``config.calculate_per_token_loss``) gradients are summed over data-parallel replicas
    and divided by the global number of loss tokens, so the update is the gradient of the
    mean loss per token over the whole global batch for any DP size or microbatch split;
    without it they are averaged as in :func:`allreduce_grads_cpu`.
    """
    from megatron.core import parallel_state

    if num_tokens is None:
        allreduce_grads_cpu(model_chunks)
        return
    _sync_tied_embedding(model_chunks)
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    if pp_group.size() > 1:
        dist.broadcast(num_tokens, src=parallel_state.get_pipeline_model_parallel_last_rank(), group=pp_group)
    grads = [p.grad for m in model_chunks for p in m.parameters() if p.grad is not None]
    dp = parallel_state.get_data_parallel_world_size()
    if dp > 1:
        dist.all_reduce(num_tokens, group=parallel_state.get_data_parallel_group())
        _all_reduce_flat(grads, parallel_state.get_data_parallel_group())
    if grads:
        torch._foreach_mul_(grads, 1.0 / max(int(num_tokens), 1))
