"""Safety labelers behind one batched interface (``Labeler`` in data/types.py).

``build_labeler(name, **options)``:

* ``oracle``: labels carried by the records (no options);
* ``classifier``: the embedded classifier (``artifact_dir``, ``model``: default = the
  fine-tuned MiniLM, ``hashed`` = the fast n-gram head, ``minilm`` = the previous linear head;
  ``unsafe_threshold``, ``controversial_threshold``);
* ``openai``: an OpenAI-compatible guard endpoint (fields of ``OpenAIConfig``: ``endpoint``,
  ``model``, ``concurrency``, ``timeout_s``, ``max_retries``, ``cache_path`` ...);
* ``hf``: a local Hugging Face guard model (``model_dir``, ``batch_size``,
  ``max_new_tokens``, ``instruction``, ``fallback``, ``device``).

Heavy dependencies (transformers, torch, sklearn) are imported only by the labeler that
needs them.  ``labeler_quality`` says, before any text is labelled, what the chosen labeler's
labels are worth where they were measured (the classifier's held-out user-like test, stored
in its artifact), so a preprocessing log and its stats JSON carry it.
"""

from __future__ import annotations

import json
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


def labeler_quality(name: str, options: dict | None = None) -> dict:
    """The measured held-out quality of a labeler, read from its artifact (no model is loaded).

    The classifier's comes from the held-out user-like test (labeler_training/user_test.py):
    literature flagged, framed harmful-request recall, framed benign requests flagged, AUROC.
    Guards and oracles are not measured by this project: ``measured`` is None and ``note`` says so.
    """
    options = options or {}
    if name != "classifier":
        notes = {"oracle": "labels carried by the records: as good as the records",
                 "openai": "a guard endpoint: not measured here (measure it on a hand-labelled sample)",
                 "hf": "a local guard model: not measured here (measure it on a hand-labelled sample)"}
        return {"labeler": name, "measured": None, "note": notes.get(name, "")}
    from pathlib import Path

    from megatron_reflect.data.labelers.classifier import artifact_paths, default_artifact_dir

    root = Path(options.get("artifact_dir") or default_artifact_dir())
    meta_path, _ = artifact_paths(root, options.get("model"))
    if not meta_path.is_file():
        return {"labeler": name, "artifact": str(meta_path), "measured": None, "note": "no artifact"}
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    test = meta.get("user_test")
    measured = None if test is None else {k: test[k] for k in ("literature_flagged", "framed_harmful_recall",
                                                                "bare_harmful_recall", "framed_benign_flagged",
                                                                "auroc")}
    note = "held-out user-like test (tools/train_classifier.py --user-test)" if measured else \
        "no held-out user-like test stored in this artifact"
    if "distillation" in meta:
        d = meta["distillation"]["student"]
        measured, note = {"teacher_flag_agreement": d["flag_agreement"], "teacher_flag_kappa": d["flag_kappa"]}, \
            "agreement with its teacher guard on held-out documents"
    return {"labeler": name, "family": meta.get("family"), "artifact": str(meta_path), "measured": measured,
            "note": note}


def describe_quality(q: dict) -> str:
    """One line for a log: which labeler, and what its labels were measured to be worth."""
    head = f"labeler: {q['labeler']}" + (f" ({q['family']}, {q['artifact']})" if q.get("family") else "")
    m = q.get("measured")
    if not m:
        return f"{head}; held-out quality: {q.get('note') or 'not measured'}"
    if "auroc" in m:
        return (f"{head}; held-out user-like test: literature flagged {100 * m['literature_flagged']:.1f}%, "
                f"framed harmful requests flagged {100 * m['framed_harmful_recall']:.1f}% "
                f"(bare {100 * m['bare_harmful_recall']:.1f}%), framed benign requests flagged "
                f"{100 * m['framed_benign_flagged']:.1f}%, AUROC {m['auroc']:.3f}")
    return f"{head}; {q['note']}: flag agreement {m['teacher_flag_agreement']:.3f}, kappa {m['teacher_flag_kappa']:.3f}"
