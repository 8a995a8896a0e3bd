"""A small real dataset for the trainer tests, made by the real data pipeline.

A few hundred generated records (short medical-advice documents; a third of them carry a
document-level Unsafe label with a category, the rest Safe), labelled by the oracle labeler,
segmented, rendered with reflections, tokenized by a SentencePiece model trained on them
(vocab 384), and written by megatron_reflect.data.preprocess.  About 2 s on one core.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SAFE = [
    "Drink plenty of water when you have a fever.",
    "Rest and sleep help the body recover from a cold.",
    "Wash your hands before meals to avoid infections.",
    "A balanced diet includes vegetables, fruit and whole grains.",
    "Ask your doctor before you stop taking a prescribed medicine.",
    "Regular walks improve the heart and the mood.",
    "Keep medicines out of the reach of children.",
    "Sunscreen protects the skin from burns.",
]
UNSAFE = [
    "Take ten times the label dose to make the pain stop faster.",
    "Mix the pills with alcohol to feel the effect sooner.",
    "Hide the symptoms from the doctor so the treatment continues.",
    "Crush the tablets and inject them for a stronger effect.",
]


def write_records(path: Path, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            unsafe = i % 3 == 0
            sentences = rng.sample(SAFE, 3) + ([rng.choice(UNSAFE)] if unsafe else [rng.choice(SAFE)])
            rng.shuffle(sentences)
            text = " ".join(sentences)
            texts.append(text)
            record = {"id": f"doc{i}", "text": text, "verdict": "Unsafe" if unsafe else "Safe"}
            if unsafe:
                record["category"] = "Unethical Acts"
            f.write(json.dumps(record) + "\n")
    return texts


def make_dataset(root: Path, n_records: int = 300, mode: str = "reflect") -> str:
    """Build the dataset under ``root``; returns its prefix (for ``data.blend``)."""
    from megatron_reflect.data.preprocess import PreprocessConfig, preprocess
    from megatron_reflect.data.tokenizers import train_sentencepiece
    from megatron_reflect.reflection import DEFAULT_TEMPLATE, QWEN3GUARD_CATEGORIES, Reflection, Verdict

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    texts = write_records(corpus, n_records)
    # the tokenizer also sees rendered reflections, as it would on a real reflected corpus
    reflections = [DEFAULT_TEMPLATE.render(Reflection(Verdict.SAFE))[0]] + [
        DEFAULT_TEMPLATE.render(Reflection(Verdict.UNSAFE, c))[0] for c in QWEN3GUARD_CATEGORIES]
    spm_model = train_sentencepiece(texts + reflections * 20, root / "spm", vocab_size=384)
    prefix = root / "reflect"
    preprocess(PreprocessConfig(input=[str(corpus)], output_prefix=str(prefix), tokenizer_type="sentencepiece",
                                tokenizer_model=str(spm_model), mode=mode, labeler="oracle",
                                segment_words=30, progress=False))
    return str(prefix)
