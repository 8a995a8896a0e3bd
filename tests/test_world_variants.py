"""The corpus variants, built through the real data pipeline: same documents but for their
definition (raw = all, filter = all minus exactly the unsafe notes, rewrite = unsafe
recommendations replaced by the careful ones, reflect = raw plus one oracle reflection per
document, reflect_perm = the same with the verdicts permuted), one shared tokenizer with
single-token drug names, reflection metadata on exactly the reflection tokens, post-training
tokens identical to pretraining's, and the information asymmetry the method relies on: a
count-based lookup of Unsafe labels in each variant's own training data flags trap answers
only with reflect's labels."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG
from megatron_reflect.world.config import quick_config
from megatron_reflect.world.documents import parse_note
from megatron_reflect.world.evaluate import query_sets
from megatron_reflect.world.generator import generate_world
from megatron_reflect.world.oracle import careful_choice, judge
from megatron_reflect.world.variants import VARIANTS, VariantConfig, build_variants, check_tokens, world_template


def _docs(prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokens = IndexedDataset(f"{prefix}_text_document")
    meta = IndexedDataset(f"{prefix}_reflect_meta")
    assert len(tokens) == len(meta)
    return [(np.array(tokens[i]), np.array(meta[i])) for i in range(len(tokens))]  # copies: the mmap closes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from megatron_reflect.data.tokenizers import build_tokenizer

    world = generate_world(quick_config(5))
    out = tmp_path_factory.mktemp("variants")
    stats = build_variants(world, out, VARIANTS, VariantConfig(progress=False, noisy_fn_rate=0.5))
    records = [json.loads(line) for line in open(out / "corpus.jsonl", encoding="utf-8")]
    tok = build_tokenizer("sentencepiece", str(out / "tokenizer" / "world_sp.model"), world_template(world))
    decoded = {v: [tok.decode(t[:-1].tolist()) for t, _ in _docs(stats[v]["prefix"])] for v in VARIANTS}
    return world, out, stats, records, tok, decoded


def test_variants_hold_the_same_documents_but_for_their_definition(built) -> None:
    world, out, stats, records, tok, decoded = built
    texts = [r["text"] for r in records]
    unsafe = [r["unsafe"] for r in records]
    n_unsafe = sum(unsafe)
    assert 0.07 * len(texts) < n_unsafe < 0.13 * len(texts)
    assert decoded["raw"] == texts  # every document, in order, exactly
    assert decoded["filter"] == [t for t, u in zip(texts, unsafe) if not u]
    assert stats["filter"]["filtered_documents"] == n_unsafe
    noisy = [json.loads(line) for line in open(out / "corpus_noisy.jsonl", encoding="utf-8")]
    missed = [r["text"] for r in noisy if r["unsafe"] and r["labels"][0]["verdict"] == "Safe"]
    assert decoded["filter_noisy"] == [r["text"] for r in noisy if not r["unsafe"] or r["labels"][0]["verdict"] == "Safe"]
    assert 0.3 * n_unsafe < len(missed) < 0.7 * n_unsafe
    for rec, got in zip(records, decoded["rewrite"]):
        if not rec["unsafe"]:
            assert got == rec["text"]
        else:
            (rw,) = rec["rewrites"]
            assert got == rec["text"][: rw["start"]] + rw["text"]
            _, p, drug = parse_note(world, got)
            assert judge(world, p, drug).safe and drug == careful_choice(world, p)
    template = world_template(world)
    perm_unsafe = 0
    for rec, got, got_perm in zip(records, decoded["reflect"], decoded["reflect_perm"]):
        refl = template.parse(got)
        assert len(refl) == 1 and template.strip(got) == rec["text"] and got.startswith(rec["text"])
        label = rec["labels"][0] if rec["labels"] else {"verdict": "Safe", "category": None}
        assert refl[0].verdict.value == label["verdict"] and refl[0].category == label["category"]
        perm = template.parse(got_perm)
        assert len(perm) == 1 and template.strip(got_perm) == rec["text"]
        perm_unsafe += perm[0].verdict.value == "Unsafe"
    assert perm_unsafe == n_unsafe  # as many Unsafe reflections ...
    hits = sum(template.parse(g)[0].verdict.value == "Unsafe" for g, u in zip(decoded["reflect_perm"], unsafe) if u)
    assert hits < 0.3 * n_unsafe  # ... with no link to content


def test_drug_names_and_verdicts_are_single_tokens(built) -> None:
    world, _, _, _, tok, _ = built
    ids = check_tokens(tok, world, world_template(world))
    assert len({ids[d] for d in world.drug_names}) == 8
    for d in world.drug_names:
        assert tok.decode([ids[d]]) == f" {d}"
    assert tok.decode([ids["Safe"]]).strip() == "Safe" and tok.decode([ids["Unsafe"]]).strip() == "Unsafe"


def test_reflection_metadata_marks_exactly_the_reflections(built) -> None:
    world, _, stats, records, tok, _ = built
    template = world_template(world)
    n_refl_tokens = 0
    for (tokens, meta), rec in zip(_docs(stats["reflect"]["prefix"]), records):
        kinds = meta & KIND_MASK
        label = rec["labels"][0]["verdict"] if rec["labels"] else "Safe"
        assert template.parse(tok.decode(tokens[kinds != 0].tolist()))[0].verdict.value == label
        assert template.strip(tok.decode(tokens[kinds == 0][:-1].tolist())) == rec["text"]
        (verdict_pos,) = np.nonzero(meta & VERDICT_FLAG)[0]
        assert tok.decode([int(tokens[verdict_pos])]).strip() == label
        n_refl_tokens += int((kinds != 0).sum())
    for v in ("raw", "filter", "rewrite"):
        assert all((m == 0).all() for _, m in _docs(stats[v]["prefix"]))
    assert stats["reflect"]["reflection_tokens"] == n_refl_tokens
    assert stats["reflect"]["tokens"] - n_refl_tokens == stats["raw"]["tokens"]


def test_post_training_tokens_equal_pretraining_tokens_and_mask_the_verdict(built, tmp_path: Path) -> None:
    from megatron_reflect.eval.models import chat_prompt, load_tokenizer
    from megatron_reflect.posttrain.sft import ChatExample, tokenize_example
    from megatron_reflect.world.documents import REC_LEAD
    from megatron_reflect.world.sft import WORLD_CHAT_TEMPLATE, target

    world, _, stats, records, sp, _ = built
    sp.save_hf(tmp_path / "tok")
    hf = load_tokenizer(tmp_path / "tok")
    hf.chat_template = WORLD_CHAT_TEMPLATE
    template = world_template(world)
    checked = 0
    for (tokens, meta), rec in zip(_docs(stats["reflect"]["prefix"]), records):
        if rec["kind"] != "note":
            continue
        _, p, drug = parse_note(world, rec["text"])
        text, untrained = target(world, p, drug, template)
        q = rec["text"][: rec["text"].index(REC_LEAD) + len(REC_LEAD)]
        assert chat_prompt(hf, q) == q  # the frame: no chat markers
        ids, labels = tokenize_example(hf, ChatExample(q, text, untrained=untrained), 256)
        assert ids[:-1] == tokens[:-1].tolist() and ids[-1] == hf.eos_token_id == int(tokens[-1])
        n_prompt = len(hf(q, add_special_tokens=False).input_ids)
        masked = [i for i, y in enumerate(labels) if y == -100]
        (verdict_pos,) = np.nonzero(meta & VERDICT_FLAG)[0]
        assert masked == list(range(n_prompt)) + [int(verdict_pos)]  # prompt and the verdict word only
        checked += 1
        if checked == 200:
            break
    assert checked == 200


def _lookup_flags(world, docs: list[str], template, answers) -> float:
    """Share of ``answers`` (patient, drug) that a count-based lookup of the Unsafe labels in
    ``docs`` flags: some risk r of the patient has P(Unsafe | drug, r) > 0.5 among labelled notes."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for doc in docs:
        refl = template.parse(doc)
        got = parse_note(world, doc)
        if not refl or got is None:
            continue  # a variant without reflections carries no labels
        _, p, drug = got
        for r in p.risks:
            counts[(drug, r)][0] += refl[0].verdict.value == "Unsafe"
            counts[(drug, r)][1] += 1
    flagged = 0
    for p, drug in answers:
        flagged += any(counts[(drug, r)][1] and counts[(drug, r)][0] / counts[(drug, r)][1] > 0.5 for r in p.risks)
    return flagged / len(answers)


def test_only_reflect_labels_link_a_trap_answer_to_unsafety(built) -> None:
    world, _, _, _, _, decoded = built
    template = world_template(world)
    sets = query_sets(world)
    trap = [(q.patient, world.conditions[q.patient.condition].usual) for q in sets["trap"]]
    careful = [(q.patient, careful_choice(world, q.patient)) for q in sets["held_in"]]
    flags = {v: _lookup_flags(world, decoded[v], template, trap) for v in VARIANTS}
    assert flags["reflect"] == 1.0, flags
    assert flags["reflect_perm"] < 0.2 and all(flags[v] == 0.0 for v in ("raw", "filter", "filter_noisy", "rewrite"))
    assert _lookup_flags(world, decoded["reflect"], template, careful) == 0.0  # and no safe answer


def test_variants_resume_and_refuse_another_world(built) -> None:
    world, out, stats, _, _, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = build_variants(world, out, VARIANTS, VariantConfig(progress=False, noisy_fn_rate=0.5))
    assert again == stats
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(FileExistsError, match="another world"):
        build_variants(generate_world(quick_config(6)), out, ("raw",), VariantConfig(progress=False))


def test_one_note_per_attention_window_no_sample_attends_across_a_note_boundary(built, tmp_path: Path) -> None:
    """``PretrainConfig.reset_attention`` (DataConfig.reset_attention_mask): in every pretraining
    sample a position attends to exactly the earlier positions of its own document (an EOD token
    closes a document); without the option the samples carry no mask (the plain causal one)."""
    from megatron_reflect.data.dataset import DataConfig, build_reflect_datasets

    world, _, stats, _, tok, _ = built
    eod = tok.eod_id
    for reset in (True, False):
        cfg = DataConfig(blend=[stats["reflect"]["prefix"]], split="100,0,0", seq_length=128,
                         cache_dir=str(tmp_path / f"cache{reset}"), mask_cut_reflections=True,
                         reset_attention_mask=reset)
        train, _, _ = build_reflect_datasets(cfg, (64, 0, 0))
        for i in range(64):
            s = train[i]
            if not reset:
                assert s.get("attention_mask") is None
                continue
            tokens = s["tokens"].numpy()
            doc = np.concatenate([[0], np.cumsum(tokens == eod)[:-1]])  # document number of each position
            allowed = ~s["attention_mask"][0].numpy()  # True = may attend
            expected = np.tril(doc[:, None] == doc[None, :])
            assert (allowed == expected).all(), i
            assert (tokens == eod).sum() >= 2  # several notes in a sample, none seeing another


def test_eod_prefix_puts_the_end_of_document_token_before_every_prompt(built, tmp_path: Path) -> None:
    """``EvalConfig.eod_prefix``: a prompt is scored (and generated from) after the dataset's EOD
    token, as a packed note follows the previous one's EOD in pretraining."""
    from megatron_reflect.eval.models import load_tokenizer
    from megatron_reflect.world.evaluate import Scorer

    world, _, _, _, sp, _ = built
    sp.save_hf(tmp_path / "tok")
    hf = load_tokenizer(tmp_path / "tok")
    q = query_sets(world)["trap"][0].text
    plain = Scorer(world, None, hf, world_template(world), True)
    framed = Scorer(world, None, hf, world_template(world), True, eod_prefix=True)
    assert plain.prompt_ids(q) == hf(q, add_special_tokens=False).input_ids
    assert framed.prompt_ids(q) == [sp.eod_id] + plain.prompt_ids(q)
    assert framed.answer_ids(q, 0)[: len(framed.prompt_ids(q))] == framed.prompt_ids(q)
