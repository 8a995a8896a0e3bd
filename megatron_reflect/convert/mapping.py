"""The Megatron <-> Hugging Face Llama mapping, in one place: names, shapes, fused weights.

Why one table: every converter direction (import, export, the dist-checkpoint reader) walks
the same :data:`LAYER_RULES` / :data:`GLOBAL_RULES`, so a name can never be mapped one way
and forgotten the other.  Each :class:`Rule` names a tensor three ways:

* ``megatron``: the full-state-dict name (:mod:`megatron_reflect.model.state`), per layer;
* ``dist``: the key in a torch_dist checkpoint, where megatron stacks all layers on a
  leading axis and stores the norms under Transformer Engine's names (the local layer spec
  maps ``input_layernorm`` / ``pre_mlp_layernorm`` to them when saving);
* ``hf``: the Hugging Face ``LlamaForCausalLM`` name(s).

Two fused weights need transforms, both pure reshapes/concatenations (bit-exact both ways):
``linear_qkv`` is interleaved per KV group as ``[q heads of the group; k; v]``, and
``linear_fc1`` is ``[gate; up]``.  The vocabulary-sized weights carry megatron's padding
rows (zeros on import, dropped on export).  Cost: none beyond one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from megatron_reflect.errors import ConversionError
from megatron_reflect.model.presets import ModelConfig

Fuse = Literal["copy", "qkv", "gate_up", "vocab"]
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


@dataclass(frozen=True)
class Rule:
    """One Megatron tensor and the Hugging Face tensor(s) it is made of.  ``{layer}`` marks
    per-layer names (global layer number)."""

    megatron: str
    dist: str
    hf: tuple[str, ...]
    fuse: Fuse = "copy"
    layer: int | None = None  # set by :meth:`at`; ``dist`` then stacks all layers on axis 0

    def at(self, layer: int) -> "Rule":
        return Rule(self.megatron.format(layer=layer), self.dist, tuple(h.format(layer=layer) for h in self.hf),
                    self.fuse, layer)


_L = "decoder.layers.{layer}."
_H = "model.layers.{layer}."
LAYER_RULES: tuple[Rule, ...] = (
    Rule(_L + "input_layernorm.weight", "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
         (_H + "input_layernorm.weight",)),
    Rule(_L + "self_attention.linear_qkv.weight", "decoder.layers.self_attention.linear_qkv.weight",
         (_H + "self_attn.q_proj.weight", _H + "self_attn.k_proj.weight", _H + "self_attn.v_proj.weight"), "qkv"),
    Rule(_L + "self_attention.linear_proj.weight", "decoder.layers.self_attention.linear_proj.weight",
         (_H + "self_attn.o_proj.weight",)),
    Rule(_L + "pre_mlp_layernorm.weight", "decoder.layers.mlp.linear_fc1.layer_norm_weight",
         (_H + "post_attention_layernorm.weight",)),
    Rule(_L + "mlp.linear_fc1.weight", "decoder.layers.mlp.linear_fc1.weight",
         (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), "gate_up"),
    Rule(_L + "mlp.linear_fc2.weight", "decoder.layers.mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",)),
)
EMBEDDING = Rule("embedding.word_embeddings.weight", "embedding.word_embeddings.weight",
                 ("model.embed_tokens.weight",), "vocab")
FINAL_NORM = Rule("decoder.final_layernorm.weight", "decoder.final_layernorm.weight", ("model.norm.weight",))
OUTPUT = Rule("output_layer.weight", "output_layer.weight", ("lm_head.weight",), "vocab")


def rules(cfg: ModelConfig) -> list[Rule]:
    """Every tensor of the model, in Hugging Face file order (embedding, layers, norm, head)."""
    out = [EMBEDDING]
    for layer in range(cfg.num_layers):
        out += [r.at(layer) for r in LAYER_RULES]
    out.append(FINAL_NORM)
    if not cfg.tie_embeddings:
        out.append(OUTPUT)
    return out


def hf_shapes(rule: Rule, cfg: ModelConfig) -> list[tuple[int, ...]]:
    """Shapes of the Hugging Face tensors of ``rule`` (unpadded vocabulary)."""
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    if rule.fuse == "vocab":
        return [(cfg.vocab_size, h)]
    if rule.fuse == "qkv":
        return [(cfg.num_attention_heads * d, h), (cfg.num_query_groups * d, h), (cfg.num_query_groups * d, h)]
    if rule.fuse == "gate_up":
        return [(f, h), (f, h)]
    if rule.megatron.endswith("linear_proj.weight"):
        return [(h, cfg.num_attention_heads * d)]
    if rule.megatron.endswith("linear_fc2.weight"):
        return [(h, f)]
    return [(h,)]  # norms


def megatron_shape(rule: Rule, cfg: ModelConfig, padded_vocab: int) -> tuple[int, ...]:
    h = cfg.hidden_size
    if rule.fuse == "vocab":
        return (padded_vocab, h)
    shapes = hf_shapes(rule, cfg)
    return (sum(s[0] for s in shapes), h) if len(shapes) > 1 else shapes[0]


def _qkv_views(cfg: ModelConfig) -> tuple[int, int, int]:
    d = cfg.head_dim
    return cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups * d, d


def to_megatron(rule: Rule, tensors: list[torch.Tensor], cfg: ModelConfig, padded_vocab: int) -> torch.Tensor:
    """The Megatron tensor of ``rule`` from its Hugging Face tensors (in ``rule.hf`` order)."""
    if rule.fuse == "qkv":
        q, k, v = tensors
        groups, q_rows, d = _qkv_views(cfg)
        h = q.shape[-1]
        return torch.cat([q.reshape(groups, q_rows, h), k.reshape(groups, d, h), v.reshape(groups, d, h)],
                         dim=1).reshape(-1, h)
    if rule.fuse == "gate_up":
        return torch.cat(tensors, dim=0)
    if rule.fuse == "vocab":
        (w,) = tensors
        pad = padded_vocab - w.shape[0]
        return torch.cat([w, w.new_zeros(pad, w.shape[1])], dim=0) if pad > 0 else w
    (w,) = tensors
    return w


def to_hf(rule: Rule, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """The Hugging Face tensors of ``rule`` (in ``rule.hf`` order) from its Megatron tensor."""
    if rule.fuse == "qkv":
        groups, q_rows, d = _qkv_views(cfg)
        h = tensor.shape[-1]
        q, k, v = tensor.reshape(groups, q_rows + 2 * d, h).split([q_rows, d, d], dim=1)
        return [q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)]
    if rule.fuse == "gate_up":
        return list(tensor.chunk(2, dim=0))
    if rule.fuse == "vocab":
        return [tensor[: cfg.vocab_size]]
    return [tensor]


# ---- configurations -------------------------------------------------------------------------


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConversionError(f"{where}: rope type {kind!r} is not supported (only plain RoPE)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def model_config_from_hf(hf: dict[str, Any], where: str) -> ModelConfig:
    """A :class:`ModelConfig` from a Hugging Face ``config.json`` (Llama family only)."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ConversionError(f"{where}: unsupported architecture {archs or hf.get('model_type')!r} "
                              f"(model_type {hf.get('model_type')!r}); supported: {list(SUPPORTED_ARCHITECTURES)}")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(hf.get(key), int):
            raise ConversionError(f"{where}: field {key!r} is missing or not an integer")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (only silu / SwiGLU)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{where}: {key}=true is not supported (Llama has no biases)")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise ConversionError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {hf['hidden_size']}")
    cfg = ModelConfig(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads") or heads,
        vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rotary_base=_rope_theta(hf, where),
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )
    try:
        cfg.validate()
    except Exception as exc:
        raise ConversionError(f"{where}: {exc}") from None
    return cfg


def hf_config_from_model_config(cfg: ModelConfig, dtype: torch.dtype, token_ids: dict[str, int | None]):
    """A ``transformers.LlamaConfig`` equal in architecture to ``cfg``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=list(SUPPORTED_ARCHITECTURES),
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_epsilon,
        rope_theta=cfg.rotary_base,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=cfg.init_method_std,
        dtype=str(dtype).removeprefix("torch."),
        **token_ids,
    )
