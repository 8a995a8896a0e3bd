"""The corpus variants, built through the real data pipeline: same documents but for their
definition (raw = all, filter = all minus exactly the unsafe notes, rewrite = unsafe
recommendations replaced by the safe ones, reflect = raw plus one oracle reflection per
document), one shared tokenizer, and reflection metadata on exactly the reflection tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG
from megatron_reflect.world.config import quick_config
from megatron_reflect.world.generator import generate_world
from megatron_reflect.world.variants import VARIANTS, VariantConfig, build_variants, world_template


def _docs(prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokens = IndexedDataset(f"{prefix}_text_document")
    meta = IndexedDataset(f"{prefix}_reflect_meta")
    assert len(tokens) == len(meta)
    return [(np.array(tokens[i]), np.array(meta[i])) for i in range(len(tokens))]  # copies: the mmap closes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    world = generate_world(quick_config(5))
    out = tmp_path_factory.mktemp("variants")
    stats = build_variants(world, out, VARIANTS, VariantConfig(progress=False, noisy_fn_rate=0.5))
    records = [json.loads(line) for line in open(out / "corpus.jsonl", encoding="utf-8")]
    return world, out, stats, records


def test_variants_hold_the_same_documents_but_for_their_definition(built) -> None:
    from megatron_reflect.data.tokenizers import build_tokenizer

    world, out, stats, records = built
    tok = build_tokenizer("sentencepiece", str(out / "tokenizer" / "world_sp.model"))
    decoded = {v: [tok.decode(t[:-1].tolist()) for t, _ in _docs(stats[v]["prefix"])] for v in VARIANTS}
    texts = [r["text"] for r in records]
    unsafe = [r["unsafe"] for r in records]
    n_unsafe = sum(unsafe)
    assert n_unsafe == round(world.config.unsafe_fraction * world.config.num_case_notes)
    # raw: every document, in order, exactly
    assert decoded["raw"] == texts
    # filter: exactly the safe documents
    assert decoded["filter"] == [t for t, u in zip(texts, unsafe) if not u]
    assert stats["filter"]["filtered_documents"] == n_unsafe
    # noisy filter: every safe document plus the unsafe ones its labels missed (about half here)
    noisy = [json.loads(line) for line in open(out / "corpus_noisy.jsonl", encoding="utf-8")]
    missed = [r["text"] for r in noisy if r["unsafe"] and r["labels"][0]["verdict"] == "Safe"]
    assert decoded["filter_noisy"] == [r["text"] for r in noisy if not r["unsafe"] or r["text"] in missed]
    assert 0.3 * n_unsafe < len(missed) < 0.7 * n_unsafe
    # rewrite: safe documents unchanged; unsafe ones differ only in their recommendation sentence
    assert len(decoded["rewrite"]) == len(texts)
    for rec, got in zip(records, decoded["rewrite"]):
        if not rec["unsafe"]:
            assert got == rec["text"]
        else:
            (rw,) = rec["rewrites"]
            assert got == rec["text"][: rw["start"]] + rw["text"]
    # reflect: the raw text plus one reflection per document, with the oracle's verdict and category
    template = world_template(world)
    assert len(decoded["reflect"]) == len(texts)
    for rec, got in zip(records, decoded["reflect"]):
        refl = template.parse(got)
        assert len(refl) == 1 and template.strip(got) == rec["text"]
        label = rec["labels"][0] if rec["labels"] else {"verdict": "Safe", "category": None}
        assert refl[0].verdict.value == label["verdict"] and refl[0].category == label["category"]
        assert got.startswith(rec["text"])


def test_reflection_metadata_marks_exactly_the_reflections(built) -> None:
    from megatron_reflect.data.tokenizers import build_tokenizer

    world, out, stats, records = built
    tok = build_tokenizer("sentencepiece", str(out / "tokenizer" / "world_sp.model"))
    template = world_template(world)
    n_refl_tokens = 0
    for (tokens, meta), rec in zip(_docs(stats["reflect"]["prefix"]), records):
        kinds = meta & KIND_MASK
        marked = tok.decode(tokens[kinds != 0].tolist())
        label = rec["labels"][0]["verdict"] if rec["labels"] else "Safe"
        assert template.parse(marked)[0].verdict.value == label
        assert template.strip(tok.decode(tokens[kinds == 0][:-1].tolist())) == rec["text"]
        (verdict_pos,) = np.nonzero(meta & VERDICT_FLAG)[0]
        assert tok.decode([int(tokens[verdict_pos])]).strip() == label
        n_refl_tokens += int((kinds != 0).sum())
    for v in ("raw", "filter", "rewrite"):
        assert all((m == 0).all() for _, m in _docs(stats[v]["prefix"]))
    assert stats["reflect"]["reflection_tokens"] == n_refl_tokens
    # the overhead the report quotes: reflection tokens over text tokens
    text_tokens = stats["reflect"]["tokens"] - n_refl_tokens
    assert stats["reflect"]["overhead_pct"] == pytest.approx(100 * n_refl_tokens / text_tokens, abs=1e-3)
    assert stats["reflect"]["tokens"] - n_refl_tokens == stats["raw"]["tokens"]


def test_variants_resume_and_refuse_another_world(built, tmp_path: Path) -> None:
    world, out, stats, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = build_variants(world, out, VARIANTS, VariantConfig(progress=False, noisy_fn_rate=0.5))
    assert again == stats
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "variants.json"} == {
        p: t for p, t in before.items() if p.name != "variants.json"}
    with pytest.raises(FileExistsError, match="another world"):
        build_variants(generate_world(quick_config(6)), out, ("raw",), VariantConfig(progress=False))


def test_sft_tokenization_matches_pretraining_and_masks_verdicts(built, tmp_path: Path) -> None:
    from megatron_reflect.data.tokenizers import build_tokenizer
    from megatron_reflect.eval.models import load_tokenizer
    from megatron_reflect.world.sft import sft_set, tokenize_examples

    world, out, _, _ = built
    sp = build_tokenizer("sentencepiece", str(out / "tokenizer" / "world_sp.model"))
    sp.save_hf(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    template = world_template(world)
    ex = sft_set(world, template)[0]
    (p, t, trained), = tokenize_examples(tok, [ex], train_verdicts=False)
    pieces = tok.convert_ids_to_tokens(t)
    # the reflection as pretraining wrote it: ' ', '<think>', ' Safe', ' ', '</think>'; then EOS
    assert [tok.decode([i]) for i in t[-6:-1]] == [" ", "<think>", " Safe", " ", "</think>"]
    assert t[-1] == tok.eos_token_id and pieces
    # loss on the answer, the tags and EOS; none on the verdict
    assert trained[-6:] == [True, True, False, True, True, True]
    assert all(trained[:-6])
    assert tokenize_examples(tok, [ex], train_verdicts=True)[0][2] == [True] * len(t)
    assert tok.decode(p + t[:-1]).endswith(ex.target)
