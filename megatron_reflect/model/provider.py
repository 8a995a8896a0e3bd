"""Build a megatron-core GPTModel from a :class:`ModelConfig`.

The layer spec is Transformer Engine's on a GPU with TE installed (required for FP8) and
megatron's local one otherwise; ``layer_spec`` overrides the choice.  TE is imported only
when chosen, so the CPU path never touches it.  The local spec's core attention is torch's
fused ``scaled_dot_product_attention`` (:mod:`megatron_reflect.model.attention`;
``precision.attention=megatron`` keeps megatron's unfused ``DotProductAttention``).

Kernel fusions (``precision.fusions``, on by default) are switched on only where their
kernels exist: with the TE spec, TE's fused RoPE and the softmax / SwiGLU / bias-dropout
fusions; on any GPU megatron's fused vocab-parallel cross entropy.  Gradient-accumulation
fusion (the weight-gradient GEMM accumulates straight into megatron DDP's fp32
``main_grad``; needs a model that megatron DDP wraps) is decided per layer type
(:func:`wgrad_fusion_plan`): TE's layers do it natively, megatron's own linears (the
output layer) only with apex's ``fused_weight_gradient_mlp_cuda``.  megatron passes one
config flag to both, and its own layers refuse to build with it when apex is missing, so
the flag follows apex and TE's layers are switched on after the build
(``fuse_wgrad_accumulation``, the attribute TE reads at every forward and megatron itself
reads back in ``extensions/transformer_engine.py``).  ``tools/gpu_check.sh`` measures bf16
throughput with and without the fusions and prints the plan.

FP8 needs every GEMM of a rank to have feature dimensions divisible by 16 and a token
count divisible by 8 (Transformer Engine's FP8 GEMM constraint); :func:`check_precision`
says which dimension breaks it before anything is launched.  Delayed scaling exposes TE's
amax history (``fp8_amax_history_len``, ``fp8_amax_compute_algo``) with TE's own
``DelayedScaling`` defaults (1024, ``max``) rather than megatron's (1, ``most_recent``,
which scales by the last step's amax only and overflows on any spike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime.device import use_cuda
from megatron_reflect.runtime.distributed import ParallelConfig

FP8_FEATURE_MULTIPLE = 16  # TE FP8 GEMMs: last dimension of inputs and weights
FP8_TOKEN_MULTIPLE = 8  # TE FP8 GEMMs: product of the leading dimensions (tokens)


@dataclass
class PrecisionConfig:
    """Numerics and kernels: parameter/compute dtype, FP8 through Transformer Engine, fusions."""

    dtype: Literal["fp32", "bf16"] = "fp32"
    fp8: Literal["none", "tensorwise", "delayed"] = "none"
    fp8_first_last_bf16: bool = False  # keep the first and last transformer layer in BF16 (tensorwise only)
    fusions: bool = True  # fused kernels where TE / apex provide them (module docstring)
    attention: Literal["sdpa", "megatron"] = "sdpa"  # core attention of the local layer spec
    fp8_amax_history_len: int = 1024  # delayed scaling only: amax history length (TE's default)
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"  # delayed scaling only (TE's default)
    # gradient reduce-scatter: "fp32" buffers, or "bf16" on the wire with fp32 accumulation
    # (megatron's reduce_scatter_with_fp32_accumulation; microbatch gradients then accumulate in bf16)
    grad_reduce: Literal["fp32", "bf16"] = "fp32"


def fp8_gemm_dims(model: ModelConfig, tensor_parallel: int = 1) -> dict[str, int]:
    """Feature dimensions of one rank's transformer GEMMs (inputs and outputs), by name."""
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = model.num_query_groups * model.head_dim
    tp = tensor_parallel
    return {
        "model.hidden_size": h,
        f"linear_qkv output (model.hidden_size + 2 x num_query_groups x head_dim) / TP{tp}": (h + 2 * kv) // tp,
        f"linear_proj input model.hidden_size / TP{tp}": h // tp,
        f"linear_fc1 output 2 x model.ffn_hidden_size / TP{tp}": 2 * f // tp,
        f"linear_fc2 input model.ffn_hidden_size / TP{tp}": f // tp,
    }


def check_precision(model: ModelConfig, parallel: ParallelConfig, precision: PrecisionConfig,
                    tokens_per_microbatch: int | None = None) -> None:
    """FP8 settings that megatron-core or Transformer Engine would reject after launch, as ConfigErrors.

    Pure arithmetic (no GPU needed), so a bad FP8 launch fails in ``validate`` on any machine.
    """
    if precision.fp8_amax_history_len < 1:
        raise ConfigError(f"precision.fp8_amax_history_len {precision.fp8_amax_history_len} must be >= 1")
    if precision.fp8 == "none":
        return
    if precision.fp8 == "delayed" and precision.fp8_first_last_bf16:
        # megatron-core TransformerConfig.__post_init__: "Delayed scaling does not support
        # first / last layer in BF16."
        raise ConfigError("precision.fp8=delayed cannot keep the first/last layers in BF16 "
                          "(precision.fp8_first_last_bf16=true): use precision.fp8=tensorwise or turn it off")
    bad = {name: dim for name, dim in fp8_gemm_dims(model, parallel.tensor_model_parallel_size).items()
           if dim % FP8_FEATURE_MULTIPLE}
    if bad:
        listed = "; ".join(f"{name} = {dim}" for name, dim in bad.items())
        raise ConfigError(f"precision.fp8={precision.fp8}: FP8 GEMMs need dimensions divisible by "
                          f"{FP8_FEATURE_MULTIPLE}, but {listed}; change the model or set precision.fp8=none")
    if tokens_per_microbatch is not None:
        tokens = tokens_per_microbatch
        if parallel.sequence_parallel:
            tokens //= parallel.tensor_model_parallel_size
        if tokens % FP8_TOKEN_MULTIPLE:
            per = "schedule.micro_batch_size x data.seq_length" + (" / TP" if parallel.sequence_parallel else "")
            raise ConfigError(f"precision.fp8={precision.fp8}: FP8 GEMMs need the tokens of a microbatch "
                              f"({per} = {tokens}) divisible by {FP8_TOKEN_MULTIPLE}")


def te_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def resolve_layer_spec(model: ModelConfig, precision: PrecisionConfig) -> Literal["local", "te"]:
    wanted = model.layer_spec
    if precision.fp8 != "none":
        if not use_cuda():
            raise ConfigError("precision.fp8 needs a CUDA GPU (Transformer Engine FP8); set precision.fp8=none on CPU")
        if not te_available():
            raise ConfigError("precision.fp8 needs Transformer Engine: pip install 'megatron_reflect[gpu]' "
                              "or use an NGC PyTorch container")
        if wanted == "local":
            raise ConfigError("precision.fp8 needs model.layer_spec=te (or auto)")
        return "te"
    if wanted == "auto":
        return "te" if use_cuda() and te_available() else "local"
    if wanted == "te" and not te_available():
        raise ConfigError("model.layer_spec=te but Transformer Engine cannot be imported here")
    return wanted


def grad_accum_fusion_available() -> bool:
    """Whether megatron's ColumnParallelLinear can fuse weight-gradient accumulation (apex extension)."""
    from megatron.core.tensor_parallel import layers

    return bool(layers._grad_accum_fusion_available)


def wgrad_fusion_plan(spec: str, precision: PrecisionConfig, main_grads: bool, on_gpu: bool | None = None,
                      apex: bool | None = None) -> dict[str, bool]:
    """Whether weight-gradient accumulation is fused, per layer type (module docstring).

    ``on_gpu`` / ``apex`` default to this machine's (a CUDA device; apex's extension importable).
    """
    wanted = precision.fusions and main_grads and (use_cuda() if on_gpu is None else on_gpu)
    apex = grad_accum_fusion_available() if apex is None else apex
    return {"transformer layers (TE)": wanted and spec == "te", "megatron linears (apex)": wanted and apex}


def _enable_te_wgrad_fusion(model: torch.nn.Module) -> int:
    """Switch on TE's own fused weight-gradient accumulation in every TE module; returns how many."""
    from transformer_engine.pytorch.module.base import TransformerEngineBaseModule

    modules = [m for m in model.modules() if isinstance(m, TransformerEngineBaseModule)
               and hasattr(m, "fuse_wgrad_accumulation")]
    for m in modules:
        m.fuse_wgrad_accumulation = True
    return len(modules)


def build_transformer_config(model: ModelConfig, parallel: ParallelConfig,
                             precision: PrecisionConfig | None = None, init_weights: bool = True,
                             main_grads: bool = False):
    """The megatron TransformerConfig for a Llama-family model.

    ``init_weights=False`` leaves parameters uninitialised (for callers that overwrite every
    weight, e.g. checkpoint import: random init of a 1.7B model costs minutes on a CPU).
    ``main_grads``: the model will be wrapped in megatron DDP (fp32 ``main_grad`` buffers),
    which gradient-accumulation fusion needs.
    """
    from megatron.core.transformer import TransformerConfig

    precision = precision or PrecisionConfig()
    model.validate()
    model.validate_layout(parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size)
    check_precision(model, parallel, precision)
    spec = resolve_layer_spec(model, precision)
    on_gpu = use_cuda()
    bf16 = precision.dtype == "bf16"
    te = spec == "te"
    fused = te and precision.fusions
    extra = {}
    if precision.fp8 != "none":
        extra.update(fp8="hybrid", fp8_recipe="tensorwise" if precision.fp8 == "tensorwise" else "delayed",
                     first_last_layers_bf16=precision.fp8_first_last_bf16)
    if precision.fp8 == "delayed":
        extra.update(fp8_amax_history_len=precision.fp8_amax_history_len,
                     fp8_amax_compute_algo=precision.fp8_amax_compute_algo)
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
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
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
        transformer_impl="transformer_engine" if te else "local",
        # Fusions need TE or apex kernels; off on the local (CPU) path (module docstring).
        masked_softmax_fusion=fused,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        apply_rope_fusion=fused,  # TE's fused RoPE (megatron rope_utils.fused_apply_rotary_pos_emb)
        persist_layer_norm=False,  # apex's persistent LayerNorm; TE's RMSNorm is used instead
        # megatron's own linears only (they need apex); TE layers: wgrad_fusion_plan, after the build
        gradient_accumulation_fusion=wgrad_fusion_plan(spec, precision, main_grads)["megatron linears (apex)"],
        # megatron's fused vocab-parallel cross entropy (torch.compile'd, no TE); same per-token loss
        cross_entropy_loss_fusion=on_gpu and precision.fusions,
        cross_entropy_fusion_impl="native",
        **extra,
    )


def build_gpt_model(model: ModelConfig, parallel: ParallelConfig, precision: PrecisionConfig | None = None,
                    pre_process: bool | None = None, post_process: bool | None = None, init_weights: bool = True,
                    main_grads: bool = False):
    """A GPTModel for this rank's pipeline stage (pre/post-process derived from parallel_state)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    precision = precision or PrecisionConfig()
    config = build_transformer_config(model, parallel, precision, init_weights, main_grads)
    spec = resolve_layer_spec(model, precision)
    if spec == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        layer_spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        layer_spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        if precision.attention == "sdpa":
            from megatron_reflect.model.attention import SDPAttention

            layer_spec.submodules.self_attention.submodules.core_attention = SDPAttention
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
    if wgrad_fusion_plan(spec, precision, main_grads)["transformer layers (TE)"]:
        _enable_te_wgrad_fusion(gpt)
    if use_cuda():
        gpt = gpt.cuda()
    return gpt
