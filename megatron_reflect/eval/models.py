"""Loading an evaluated model: weights, tokenizer (left padding) and its reflection format.

Why here: every evaluation and post-training stage needs the same three things, and the
reflection format must come from the checkpoint (``reflection_format.json``, written by the
exporter) when it has one, so a model trained with a custom template is evaluated with it.
Cost: one ``from_pretrained`` (SmolLM2-135M: ~4 s on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from megatron_reflect.errors import ConfigError
from megatron_reflect.reflection import DEFAULT_TEMPLATE, ReflectionTemplate

FORMAT_FILE = "reflection_format.json"


def load_template(model_dir: str | Path) -> ReflectionTemplate:
    """The checkpoint's reflection template, or DEFAULT_TEMPLATE when it carries none."""
    path = Path(model_dir) / FORMAT_FILE
    if not path.is_file():
        return DEFAULT_TEMPLATE
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    raw = raw.get("template", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object with the template fields")
    known = {f.name for f in dataclasses.fields(ReflectionTemplate)}
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k in known}
    if "categories" in fields:
        fields["categories"] = tuple(fields["categories"])
    return ReflectionTemplate(**fields)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(model_dir: str | Path, device: str = "auto", dtype: str = "float32"):
    """(model in eval mode, tokenizer with left padding and a pad token) from a HF directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json)")
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.to(resolve_device(device)).eval()
    return model, tok


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ConfigError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def chat_prompt(tokenizer, user: str, prefill: str = "") -> str:
    """The text a model sees for one user turn, with the assistant turn opened (and prefilled).

    Models without a chat template get a plain ``User:/Assistant:`` frame.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = f"User: {user}\nAssistant:"
    return text + prefill
