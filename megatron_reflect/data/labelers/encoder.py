"""The fine-tuned safety encoder: all-MiniLM-L6-v2 trained end to end as a sequence classifier.

WHY: a linear head on frozen sentence embeddings cannot separate a harmful request from a
play with one coarse line (both embed near "violence"); training the encoder's layers on
requests inside web text and on depictions of harm lets attention tell asking from telling.

Architecture: MiniLM's six transformer layers (fine-tuned), mean pooling over tokens, one
linear layer to ``1 + n_categories`` logits (column 0: the unsafe logit; the rest: the harm
category).  The word/position embeddings stay frozen at the packaged model's, so the
artifact ships only what training changed: the six layers (int8, one scale per output row)
and the head (float32), ~11 MB instead of 87 MB.  ``load`` rebuilds the model from the
packaged MiniLM plus the artifact.

Cost: torch/transformers are imported when a model is built, never at module import.  CPU
inference of 100-word segments: see the README's speed row (benchmarks/bench_labelers.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MAX_TOKENS = 192  # a 100-word segment is ~130-160 word pieces; longer text is cut at the end
TRAINED_PREFIX = "encoder."  # parameter names under this prefix (the transformer layers) are fine-tuned


def build(n_outputs: int, threads: int | None = None) -> Any:
    """A fresh SafetyEncoder on the packaged MiniLM (head initialised at zero)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from megatron_reflect.data.labelers.features import minilm_dir

    hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)

    class SafetyEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            path = minilm_dir()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.bert = AutoModel.from_pretrained(path)
            for p in self.bert.embeddings.parameters():
                p.requires_grad_(False)
            self.head = torch.nn.Linear(self.bert.config.hidden_size, n_outputs)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def encode(self, texts: Sequence[str]) -> dict:
            return self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS,
                                  return_tensors="pt")

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled)

        def trained_state(self) -> dict[str, Any]:
            """The tensors training changes: the transformer layers and the head."""
            return {k: v for k, v in self.state_dict().items()
                    if k.startswith("bert." + TRAINED_PREFIX) or k.startswith("head.")}

    return SafetyEncoder()


def quantize(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """npz arrays: 2-D layer weights as int8 with a float32 scale per output row (symmetric),
    everything else (biases, LayerNorm, the head) as float32."""
    out: dict[str, np.ndarray] = {}
    for name, t in state.items():
        a = t.detach().float().cpu().numpy()
        if a.ndim == 2 and not name.startswith("head."):
            scale = np.maximum(np.abs(a).max(axis=1), 1e-12) / 127.0
            out[f"q::{name}"] = np.clip(np.round(a / scale[:, None]), -127, 127).astype(np.int8)
            out[f"s::{name}"] = scale.astype(np.float32)
        else:
            out[f"f::{name}"] = a.astype(np.float32)
    return out


def dequantize(arrays: Any) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for key in arrays.files if hasattr(arrays, "files") else arrays:
        kind, name = key.split("::", 1)
        if kind == "q":
            state[name] = arrays[key].astype(np.float32) * arrays[f"s::{name}"][:, None]
        elif kind == "f":
            state[name] = np.asarray(arrays[key], dtype=np.float32)
    return state


def load(weights: str | Path, n_outputs: int, threads: int | None = None, device: str | None = None) -> Any:
    """A SafetyEncoder in eval mode with the artifact's (dequantized) layers and head, on ``device``
    (default: CUDA when there is one, else the CPU)."""
    import torch

    model = build(n_outputs, threads)
    with np.load(weights) as z:
        state = dequantize(z)
    missing = set(model.trained_state()) - set(state)
    if missing:
        from megatron_reflect.data.labelers.base import LabelerError

        raise LabelerError(f"{weights}: the artifact lacks {len(missing)} tensors (e.g. {sorted(missing)[0]}); "
                           f"retrain with tools/train_classifier.py")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def logits(model: Any, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """[len(texts), n_outputs] logits; batches of similar length (less padding)."""
    import torch

    out = np.zeros((len(texts), model.head.out_features), dtype=np.float32)  # (a quantized head keeps out_features)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            enc = model.encode([texts[i] for i in idx]).to(model.bert.embeddings.word_embeddings.weight.device)
            out[idx] = model(**enc).float().cpu().numpy()
    return out
