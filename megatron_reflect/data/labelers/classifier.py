"""The embedded labeler: a trained safety classifier shipped with the package.

Families (chosen by ``model``):

* default, ``finetuned``: all-MiniLM-L6-v2 fine-tuned end to end as a sequence classifier
  (encoder.py; trained by labeler_training/finetune.py on the packaged domains plus requests
  inside web frames and depictions of harm).  Scores the whole segment, one forward each.
* ``hashed``: a linear head on hashed word n-grams: thousands of segments/s, far worse on text
  unlike its training data.
* ``minilm``: the previous default, a linear head on frozen MiniLM sentence embeddings, with
  a best-sentence rule (each sentence of a segment scored alone too).  Kept for comparison.

Artifacts: ``artifacts/safety_classifier.{npz,json}`` (default) and
``safety_classifier_<family>.*``; each JSON carries its thresholds and its measured figures
(the default: the held-out user-like test, labeler_training/user_test.py).

Verdict: Unsafe if P(unsafe) of the segment reaches ``unsafe_threshold`` (or, for the
``minilm`` family, its best sentence reaches ``sentence_unsafe``); else Controversial at
``controversial_threshold`` (``sentence_controversial``); else Safe.  ``Label.score`` is the
higher of the two probabilities.  A category head gives the category of non-Safe segments:
"the most likely of the categories seen in training", forced even when none fits.

Imports: numpy only at module import; sklearn (hashed) or torch/transformers (the others)
when the labeler is built.
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


def sentence_units(text: str) -> list[str]:
    """The sentences of ``text`` (the segmenter's rules), stripped; [] for a one-sentence text."""
    from megatron_reflect.data.segment import sentences

    sents = sentences(text)
    return sents if len(sents) > 1 else []


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
    """Batched: one model forward (or featurization and matrix product) per call.  No mutable state."""

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
        # sentence rule: the stored thresholds, or the segment's when the caller sets those
        self.sentences = "sentence_controversial" in thresholds
        self.sentence_unsafe = float(thresholds.get("sentence_unsafe", 1.0) if unsafe_threshold is None
                                     else unsafe_threshold)
        self.sentence_controversial = float(thresholds.get("sentence_controversial", 1.0)
                                            if controversial_threshold is None else controversial_threshold)
        for lo, hi in ((self.controversial_threshold, self.unsafe_threshold),
                       (self.sentence_controversial, self.sentence_unsafe)):
            if not 0.0 <= lo <= hi <= 1.0:
                raise LabelerError(f"classifier thresholds must satisfy 0 <= controversial ({lo}) <= unsafe ({hi}) "
                                   f"<= 1")
        self.categories: list[str] = list(self.meta["categories"])
        if self.family == "finetuned":
            from megatron_reflect.data.labelers import encoder

            self.model = encoder.load(weights_path, 1 + len(self.categories))
            self.batch_size = batch_size
            return
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
            raise LabelerError(f"{meta_path}: unknown classifier family {self.family!r}")

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 1 + n_categories] raw scores of the texts as given: column 0 the unsafe logit."""
        if self.family == "finetuned":
            from megatron_reflect.data.labelers import encoder

            return encoder.logits(self.model, texts, self.batch_size)
        return np.asarray(self.featurizer.transform(list(texts)) @ self.weights) + self.bias

    def unit_logits(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(logits of each text, logits of its best sentence by unsafe logit; -inf rows where the
        text has one sentence or the artifact scores segments only).  One featurizer call."""
        sents = [sentence_units(t) if self.sentences else [] for t in texts]
        flat = [s for ss in sents for s in ss]
        z = self.logits(list(texts) + flat)
        seg, rest = z[:len(texts)], z[len(texts):]
        best = np.full_like(seg, -np.inf)
        k = 0
        for i, ss in enumerate(sents):
            if ss:
                j = k + int(np.argmax(rest[k:k + len(ss), 0]))
                best[i] = rest[j]
                k += len(ss)
        return seg, best

    def scores(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(P(unsafe) of each text, of its best sentence; 0 where there is none)."""
        seg, best = self.unit_logits(texts)
        return 1.0 / (1.0 + np.exp(-seg[:, 0])), 1.0 / (1.0 + np.exp(-best[:, 0]))

    def predict(self, texts: Sequence[str]) -> list[Label]:
        if not texts:
            return []
        seg, best = self.unit_logits(texts)
        p, q = 1.0 / (1.0 + np.exp(-seg[:, 0])), 1.0 / (1.0 + np.exp(-best[:, 0]))
        out = []
        for i in range(len(texts)):
            unsafe = p[i] >= self.unsafe_threshold or q[i] >= self.sentence_unsafe
            flag = unsafe or p[i] >= self.controversial_threshold or q[i] >= self.sentence_controversial
            if not flag:
                out.append(Label(Verdict.SAFE, None, float(max(p[i], q[i]))))
                continue
            # the category of the unit that triggered (the segment when both did)
            z = seg[i] if p[i] >= self.controversial_threshold else best[i]
            category = self.categories[int(np.argmax(z[1:]))] if self.categories else None
            out.append(Label(Verdict.UNSAFE if unsafe else Verdict.CONTROVERSIAL, category, float(max(p[i], q[i]))))
        return out

    def label(self, segments: Sequence[Segment], documents: dict[str, Document]) -> list[Label]:
        return self.predict([s.text for s in segments])
