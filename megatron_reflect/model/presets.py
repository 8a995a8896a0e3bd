"""Model architectures as data: one dataclass, a few named presets.

All presets are Llama-style decoders (RMSNorm, SwiGLU, RoPE, no biases), the family of
the SRP paper's SmolLM2 models; they differ in size, GQA and embedding tying.  The
dataclass is all the conversion tools need to map names and shapes to Hugging Face.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Literal

from megatron_reflect.errors import ConfigError


@dataclass
class ModelConfig:
    """A Llama-family GPT.  ``vocab_size`` is the tokenizer's; it is padded for TP when built."""

    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 172
    num_attention_heads: int = 4
    num_query_groups: int = 2
    vocab_size: int = 256
    max_position_embeddings: int = 2048
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = True
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128
    layer_spec: Literal["auto", "local", "te"] = "auto"
    hidden_dropout: float = 0.0  # after attention and MLP (SmolLM2 and SRP train without dropout)
    attention_dropout: float = 0.0  # on the attention probabilities

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        """Rows of the embedding: a multiple of ``make_vocab_size_divisible_by`` and of the TP size.

        The least common multiple, not Megatron-LM's product (divisible_by x TP): padded
        logits take part in the softmax, so a padding that changed with TP would make a
        checkpoint give different losses in another layout (and not load into it).
        """
        multiple = math.lcm(self.make_vocab_size_divisible_by, tensor_parallel_size)
        return ((self.vocab_size + multiple - 1) // multiple) * multiple

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"model: hidden_size {self.hidden_size} not divisible by num_attention_heads")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError("model: num_attention_heads must be a multiple of num_query_groups")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} {getattr(self, name)} must lie in [0, 1)")

    def validate_layout(self, tensor_parallel: int, pipeline_parallel: int) -> None:
        """The splits megatron-core needs: heads, KV groups and FFN over TP; layers over PP."""
        for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
            if getattr(self, name) % tensor_parallel:
                raise ConfigError(f"model.{name} {getattr(self, name)} is not divisible by "
                                  f"parallel.tensor_model_parallel_size {tensor_parallel}")
        if self.num_layers % pipeline_parallel:
            raise ConfigError(f"model.num_layers {self.num_layers} is not divisible by "
                              f"parallel.pipeline_model_parallel_size {pipeline_parallel}")

    def num_parameters(self) -> int:
        """Parameters of the unpadded model (embedding counted once when tied)."""
        h, f, v = self.hidden_size, self.ffn_hidden_size, self.vocab_size
        kv = self.num_query_groups * self.head_dim
        per_layer = h * (h + 2 * kv) + h * h + 2 * h * f + f * h + 2 * h
        return self.num_layers * per_layer + v * h * (1 if self.tie_embeddings else 2) + h

    def flops_per_token(self, seq_length: int) -> float:
        """Training FLOPs per token: Megatron-Bridge's and NeMo's convention for MFU.

        Forward + backward = 3x the forward; 2 FLOPs per multiply-accumulate of every GEMM
        weight (QKV, output projection, SwiGLU's three, the output layer; the embedding lookup
        is free); attention scores and values (QK^T, AV) over the causal half of the
        sequence: 2 x 2 x s x h / 2 per token and layer.  For SmolLM2-1.7B at s = 2048:
        10.87 GFLOP/token (counting the full s x s square instead gave 11.48).
        """
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        kv = self.num_query_groups * self.head_dim
        matmul_params = L * (h * (h + 2 * kv) + h * h + 3 * h * f) + self.vocab_size * h
        causal_attention = L * 2 * seq_length * h / 2  # QK^T and AV, multiply-accumulates per token
        return 3.0 * 2.0 * (matmul_params + causal_attention)


def _tiny() -> ModelConfig:
    return ModelConfig()


def _tiny_untied() -> ModelConfig:
    return dataclasses.replace(_tiny(), tie_embeddings=False)


def _smollm2_135m() -> ModelConfig:
    return ModelConfig(num_layers=30, hidden_size=576, ffn_hidden_size=1536, num_attention_heads=9,
                       num_query_groups=3, vocab_size=49152, max_position_embeddings=8192,
                       rotary_base=100000.0, norm_epsilon=1e-5, tie_embeddings=True, init_method_std=0.041666)


def _smollm2_1p7b() -> ModelConfig:
    return ModelConfig(num_layers=24, hidden_size=2048, ffn_hidden_size=8192, num_attention_heads=32,
                       num_query_groups=32, vocab_size=49152, max_position_embeddings=8192,
                       rotary_base=130000.0, norm_epsilon=1e-5, tie_embeddings=True, init_method_std=0.02)


def _llama_1p7b_gqa() -> ModelConfig:
    """SmolLM2-1.7B sized, with Llama-3-style GQA (8 KV groups) and untied embeddings."""
    return dataclasses.replace(_smollm2_1p7b(), num_query_groups=8, tie_embeddings=False, rotary_base=500000.0)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": _tiny,
    "tiny-untied": _tiny_untied,
    "smollm2-135m": _smollm2_135m,
    "smollm2-1.7b": _smollm2_1p7b,
    "llama-1.7b-gqa": _llama_1p7b_gqa,
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
