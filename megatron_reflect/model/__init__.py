"""GPTModel providers and named presets (tiny, smollm2-135m, smollm2-1.7b, llama variants)."""

from megatron_reflect.model.presets import PRESETS, ModelConfig, get_preset
from megatron_reflect.model.provider import PrecisionConfig, build_gpt_model, build_transformer_config

__all__ = ["PRESETS", "ModelConfig", "PrecisionConfig", "build_gpt_model", "build_transformer_config", "get_preset"]
