"""Build a megatron-core GPTModel from a :class:`ModelConfig`.

The layer spec is Transformer Engine's on a GPU with TE installed (required for FP8) and
megatron's local one otherwise; ``layer_spec`` overrides the choice.  TE is imported only
when chosen, so the CPU path never touches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime.distributed import ParallelConfig


@dataclass
class PrecisionConfig:
    """Numerics: parameter/compute dtype and FP8 through Transformer Engine."""

    dtype: Literal["fp32", "bf16"] = "fp32"
    fp8: Literal["none", "tensorwise", "delayed"] = "none"
    fp8_first_last_bf16: bool = False


def te_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def resolve_layer_spec(model: ModelConfig, precision: PrecisionConfig) -> Literal["local", "te"]:
    wanted = model.layer_spec
    if precision.fp8 != "none":
        if not torch.cuda.is_available():
            raise ConfigError("precision.fp8 needs a CUDA GPU (Transformer Engine FP8); set precision.fp8=none on CPU")
        if not te_available():
            raise ConfigError("precision.fp8 needs Transformer Engine: pip install 'megatron_reflect[gpu]' "
                              "or use an NGC PyTorch container")
        if wanted == "local":
            raise ConfigError("precision.fp8 needs model.layer_spec=te (or auto)")
        return "te"
    if wanted == "auto":
        return "te" if torch.cuda.is_available() and te_available() else "local"
    if wanted == "te" and not te_available():
        raise ConfigError("model.layer_spec=te but Transformer Engine cannot be imported here")
    return wanted


def build_transformer_config(model: ModelConfig, parallel: ParallelConfig,
                             precision: PrecisionConfig | None = None, init_weights: bool = True):
    """The megatron TransformerConfig for a Llama-family model.

    ``init_weights=False`` leaves parameters uninitialised (for callers that overwrite every
    weight, e.g. checkpoint import: random init of a 1.7B model costs minutes on a CPU).
    """
    from megatron.core.transformer import TransformerConfig

    precision = precision or PrecisionConfig()
    model.validate()
    spec = resolve_layer_spec(model, precision)
    on_gpu = torch.cuda.is_available()
    bf16 = precision.dtype == "bf16"
    extra = {}
    if precision.fp8 != "none":
        extra.update(fp8="hybrid", fp8_recipe="tensorwise" if precision.fp8 == "tensorwise" else "delayed",
                     first_last_layers_bf16=precision.fp8_first_last_bf16)
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        use_cpu_initialization=not on_gpu,
        perform_initialization=init_weights,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        autocast_dtype=torch.bfloat16 if bf16 else torch.float32,
        transformer_impl="transformer_engine" if spec == "te" else "local",
        # Fusions need TE or apex kernels; off on the local (CPU) path.
        masked_softmax_fusion=spec == "te",
        bias_activation_fusion=spec == "te",
        bias_dropout_fusion=spec == "te",
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        **extra,
    )


def build_gpt_model(model: ModelConfig, parallel: ParallelConfig, precision: PrecisionConfig | None = None,
                    pre_process: bool | None = None, post_process: bool | None = None, init_weights: bool = True):
    """A GPTModel for this rank's pipeline stage (pre/post-process derived from parallel_state)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    precision = precision or PrecisionConfig()
    config = build_transformer_config(model, parallel, precision, init_weights)
    if resolve_layer_spec(model, precision) == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        layer_spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        layer_spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=model.padded_vocab_size(parallel.tensor_model_parallel_size),
        max_sequence_length=model.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(model.rotary_base),
        parallel_output=True,
    )
    if torch.cuda.is_available():
        gpt = gpt.cuda()
    return gpt
