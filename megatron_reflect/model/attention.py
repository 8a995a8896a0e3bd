"""Core attention for megatron's local layer spec through torch's fused ``scaled_dot_product_attention``.

Why: megatron's local ``DotProductAttention`` materialises the [b, heads, s, s] score and
probability tensors (a ``baddbmm``, a softmax and a ``bmm``, plus the GQA keys and values
copied per head with ``repeat_interleave``).  ``torch.nn.functional.scaled_dot_product_attention``
computes the same causal softmax attention in one fused kernel (FlashAttention or the
memory-efficient kernel on a GPU, a fused C++ kernel on the CPU) and handles GQA itself
(``enable_gqa``), so a GPU without Transformer Engine trains the local spec at a speed
that means something, and the CPU demo gets faster too.  ``model.core_attention=megatron``
keeps megatron's module (the reference the tests compare against).

Masks follow megatron's convention: ``attention_mask`` None with a causal layer means
causal; a boolean mask (True = masked out, broadcastable to [b, 1, sq, sk]) replaces it, as
in megatron's unfused softmax.  Masked scores are set to -10000 as megatron's
``attention_mask_func`` does (finite, so a fully masked row gives no NaN).

On the CPU, bf16 inputs are computed in fp32 (cast in, result cast back): torch's CPU SDPA
kernel is 4-9x slower in bf16 than in fp32 here (fwd + bwd, one thread, 2-core Xeon: 32 x 2
heads x 128 x 32 348 ms bf16 vs 88 ms upcast; 4 x 4 heads (GQA 2) x 128 x 16 34.8 vs 3.7 ms),
and also slower than the unfused bf16 attention it replaces; on a GPU bf16 goes to the fused
kernels as is.

The module saves an empty ``_extra_state``, as megatron's local linear layers do, so a
local-spec checkpoint carries the keys of Transformer Engine's ``TEDotProductAttention``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_reflect.errors import ConfigError

MASK_VALUE = -10000.0  # megatron's attention_mask_func fill value


class SDPAttention(MegatronModule):
    """Drop-in ``core_attention`` of megatron's SelfAttention: [sq, b, np, hn] in, [sq, b, np x hn] out."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection: Any = None) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ConfigError("model.core_attention=sdpa: context parallelism needs Transformer Engine's attention")
        if config.window_size is not None or config.softmax_type != "vanilla":
            raise ConfigError("model.core_attention=sdpa supports plain softmax attention only (no sliding window, "
                              "no softmax offset)")
        if pg_collection is not None:
            tp = pg_collection.tp.size()
        else:
            from megatron.core import parallel_state

            tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads = config.num_attention_heads // tp
        self.groups = (config.num_query_groups or config.num_attention_heads) // tp
        self.head_dim = config.kv_channels
        # megatron's apply_query_key_layer_scaling divides the scale by the layer number and its
        # softmax multiplies it back: the product is 1 / sqrt(head_dim) either way.
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.attn_mask_type = attn_mask_type
        self.sequence_parallel = config.sequence_parallel
        # a checkpoint written before this module existed has no _extra_state for it
        self._register_load_state_dict_pre_hook(
            lambda state_dict, prefix, *args, **kwargs: state_dict.setdefault(f"{prefix}_extra_state"))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type: AttnMaskType | None = None,
                attention_bias: torch.Tensor | None = None, packed_seq_params: Any = None) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ConfigError("model.core_attention=sdpa: packed sequences and attention bias need "
                              "Transformer Engine's attention")
        sq, b = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        mask = None
        causal = False
        if attention_mask is not None:
            mask = torch.zeros(attention_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
                attention_mask.to(q.device, torch.bool), MASK_VALUE)
        elif mask_type == AttnMaskType.causal and sq > 1:
            causal = True
        dropout = self.dropout if self.training else 0.0
        fork = (tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 and not self.sequence_parallel
                else contextlib.nullcontext())
        dtype = q.dtype
        if q.device.type == "cpu" and dtype != torch.float32:  # module docstring: bf16 SDPA is slow on CPUs
            q, k, v = q.float(), k.float(), v.float()
            mask = None if mask is None else mask.float()
        with fork:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                                     scale=self.scale, enable_gqa=self.heads != self.groups)
        return context.to(dtype).permute(2, 0, 1, 3).reshape(sq, b, self.heads * self.head_dim)

    def get_extra_state(self) -> None:
        """An empty extra state: the checkpoint keys of TEDotProductAttention."""
        return None

    def set_extra_state(self, state: Any) -> None:
        """Transformer Engine's FP8 metadata has no meaning here."""

