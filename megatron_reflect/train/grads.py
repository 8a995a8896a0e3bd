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


def allreduce_grads_cpu(model_chunks: list[torch.nn.Module]) -> None:
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1 and parallel_state.is_rank_in_embedding_group():
        for chunk in model_chunks:
            weight = _tied_embedding_weight(chunk)
            if weight is not None and weight.grad is not None:
                dist.all_reduce(weight.grad, group=parallel_state.get_embedding_group())
                break
    dp = parallel_state.get_data_parallel_world_size()
    if dp > 1:
        group = parallel_state.get_data_parallel_group()
        grads = [p.grad for m in model_chunks for p in m.parameters() if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=group)
            flat /= dp
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
