"""Safety labelers behind one batched interface (``Labeler`` in data/types.py).

``build_labeler(name, **options)``:

* ``oracle``: labels carried by the records (no options);
* ``classifier``: the embedded hashed n-gram classifier (``artifact_dir``,
  ``unsafe_threshold``, ``controversial_threshold``);
* ``openai``: an OpenAI-compatible guard endpoint (fields of ``OpenAIConfig``: ``endpoint``,
  ``model``, ``concurrency``, ``timeout_s``, ``max_retries``, ``cache_path`` ...);
* ``hf``: a local Hugging Face guard model (``model_dir``, ``batch_size``,
  ``max_new_tokens``, ``instruction``, ``fallback``, ``device``).

Heavy dependencies (transformers, torch, sklearn) are imported only by the labeler that
needs them.
"""

from __future__ import annotations

from typing import Any

from megatron_reflect.data.types import Labeler
from megatron_reflect.errors import ConfigError

LABELERS = ("oracle", "classifier", "openai", "hf")


def build_labeler(name: str, **options: Any) -> Labeler:
    try:
        if name == "oracle":
            from megatron_reflect.data.labelers.oracle import OracleLabeler

            return OracleLabeler(**options)
        if name == "classifier":
            from megatron_reflect.data.labelers.classifier import ClassifierLabeler

            return ClassifierLabeler(**options)
        if name == "openai":
            from megatron_reflect.data.labelers.openai import OpenAIConfig, OpenAILabeler

            if not options.get("endpoint"):
                raise ConfigError("labeler 'openai' needs an endpoint (--endpoint http://host:port)")
            return OpenAILabeler(OpenAIConfig(**options))
        if name == "hf":
            from megatron_reflect.data.labelers.hf import HFGuardLabeler

            if not options.get("model_dir"):
                raise ConfigError("labeler 'hf' needs a model directory (--hf-model-dir DIR)")
            return HFGuardLabeler(**options)
    except TypeError as e:
        raise ConfigError(f"labeler {name!r}: bad option ({e})") from e
    raise ConfigError(f"unknown labeler {name!r}; choose one of {', '.join(LABELERS)}")
