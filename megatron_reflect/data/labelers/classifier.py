"""The embedded default labeler: a trained linear safety head over a text featurizer.

Families (features.py; chosen by ``model``): ``minilm`` (all-MiniLM-L6-v2 sentence
embeddings, the default: best on domains it never saw, see docs/DATA_SOURCES.md),
``hashed`` (hashed word n-grams: ~100x faster, much worse off its training domains) and
``static`` (per-word-piece MiniLM vectors, when its artifact has been trained).  The
artifact of the default is ``artifacts/safety_classifier.{npz,json}``; the others are
``safety_classifier_<family>.*``.  ``tools/train_classifier.py`` retrains them and writes
their held-out-domain tables into the JSON.

Verdict from p = P(unsafe): Unsafe if p >= ``unsafe_threshold``, Controversial if p >=
``controversial_threshold``, else Safe; ``Label.score`` = p.  The thresholds stored in the
artifact were calibrated for precision (training.py): out of fold, at most 2 % of any
training benign domain's segments reach the Controversial threshold.  A multinomial
category head gives the category of non-Safe segments: "the most likely of the categories
seen in training", forced even when none fits.

Imports: numpy only at module import; sklearn (hashed) or torch/transformers (minilm) when
the labeler is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from megatron_reflect.data.labelers.base import LabelerError
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.reflection import Verdict

ARTIFACT_NAME = "safety_classifier"


def default_artifact_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "artifacts"


def artifact_paths(root: Path, model: str | None) -> tuple[Path, Path]:
    name = ARTIFACT_NAME if model in (None, "default") else f"{ARTIFACT_NAME}_{model}"
    meta, weights = root / f"{name}.json", root / f"{name}.npz"
    if model not in (None, "default") and not meta.is_file():  # the default artifact may be that family
        d = root / f"{ARTIFACT_NAME}.json"
        if d.is_file() and json.loads(d.read_text(encoding="utf-8")).get("family") == model:
            return d, root / f"{ARTIFACT_NAME}.npz"
    return meta, weights


class ClassifierLabeler:
    """Batched: one featurization and one matrix product per call.  No mutable state."""

    name = "classifier"

    def __init__(self, artifact_dir: str | Path | None = None, unsafe_threshold: float | None = None,
                 controversial_threshold: float | None = None, model: str | None = None,
                 batch_size: int = 32) -> None:
        root = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir()
        meta_path, weights_path = artifact_paths(root, model)
        if not meta_path.is_file() or not weights_path.is_file():
            raise LabelerError(f"{root}: no classifier artifact {meta_path.name}/{weights_path.name} "
                               f"(model={model or 'default'}); run tools/train_classifier.py")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.family: str = self.meta.get("family", "hashed")
        thresholds = self.meta["thresholds"]
        self.unsafe_threshold = float(unsafe_threshold if unsafe_threshold is not None else thresholds["unsafe"])
        self.controversial_threshold = float(controversial_threshold if controversial_threshold is not None
                                             else thresholds["controversial"])
        if not 0.0 <= self.controversial_threshold <= self.unsafe_threshold <= 1.0:
            raise LabelerError(f"classifier thresholds must satisfy 0 <= controversial "
                               f"({self.controversial_threshold}) <= unsafe ({self.unsafe_threshold}) <= 1")
        self.categories: list[str] = list(self.meta["categories"])
        with np.load(weights_path) as z:
            self.bias = z["bias"].astype(np.float32)
            if "weights" in z:
                self.weights = z["weights"].astype(np.float32)
            else:  # sparse rows of a hashed model
                n = int(self.meta["features"]["n_features"])
                dense = np.zeros((n, 1 + len(self.categories)), dtype=np.float32)
                dense[z["rows"]] = z["values"].astype(np.float32)
                self.weights = dense
        from megatron_reflect.data.labelers.features import build_featurizer, shared_minilm

        if self.family == "hashed":
            f = self.meta["features"]
            self.featurizer = build_featurizer("hashed", n_features=f["n_features"], ngram_range=f["ngram_range"])
        elif self.family == "minilm":
            self.featurizer = shared_minilm(batch_size)
        else:
            self.featurizer = build_featurizer(self.family)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 1 + n_categories] raw scores: column 0 the unsafe logit."""
        return np.asarray(self.featurizer.transform(list(texts)) @ self.weights) + self.bias

    def unsafe_probability(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(texts)[:, 0]))

    def predict(self, texts: Sequence[str]) -> list[Label]:
        if not texts:
            return []
        z = self.logits(texts)
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        cats = np.argmax(z[:, 1:], axis=1) if z.shape[1] > 1 else np.zeros(len(p), dtype=int)
        out = []
        for prob, cat in zip(p.tolist(), cats.tolist()):
            category = self.categories[cat] if self.categories else None
            if prob >= self.unsafe_threshold:
                out.append(Label(Verdict.UNSAFE, category, prob))
            elif prob >= self.controversial_threshold:
                out.append(Label(Verdict.CONTROVERSIAL, category, prob))
            else:
                out.append(Label(Verdict.SAFE, None, prob))
        return out

    def label(self, segments: Sequence[Segment], documents: dict[str, Document]) -> list[Label]:
        return self.predict([s.text for s in segments])
