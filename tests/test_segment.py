"""Segmenter: exact boundaries, tiling on many inputs (CJK, pathological whitespace), limits."""

import random
import re

import pytest

from megatron_reflect.data.segment import SegmenterConfig, segment_document, segment_spans
from megatron_reflect.data.types import Document
from megatron_reflect.errors import ConfigError

CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def texts(spans, text):
    return [text[s:e] for s, e in spans]


def weight(piece: str, cfg: SegmenterConfig) -> float:
    """Independent re-count: words (long runs split) + CJK characters at max_words/max_chars_cjk."""
    cjk = sum(1 for ch in CJK.findall(piece) if not ch.isspace())  # U+3000 is a space
    words = 0
    for w in CJK.sub(" ", piece).split():
        words += -(-len(w) // cfg.max_chars_cjk)
    return words + cjk * cfg.max_words / cfg.max_chars_cjk


def test_exact_boundaries_latin():
    cfg = SegmenterConfig(max_words=5)
    t = "Hello world. This is a test! And another sentence that is much longer than five words here. Ok."
    assert texts(segment_spans(t, cfg), t) == [
        "Hello world. ", "This is a test! ", "And another sentence that is ", "much longer than five words ", "here. Ok."]


def test_exact_boundaries_whitespace_and_newlines():
    cfg = SegmenterConfig(max_words=3)
    t = "  \n\nOne two.\n\n\nThree four five six.   Seven?  "
    assert texts(segment_spans(t, cfg), t) == ["  \n\nOne two.\n\n\n", "Three four five ", "six.   Seven?  "]


def test_exact_boundaries_cjk_character_fallback():
    cfg = SegmenterConfig(max_words=5, max_chars_cjk=10)  # 10 CJK characters per segment
    t = "我爱北京天安门。天安门上太阳升。" + "一二三四五六七八九十十一十二"
    assert texts(segment_spans(t, cfg), t) == ["我爱北京天安门。", "天安门上太阳升。", "一二三四五六七八九十", "十一十二"]


def test_quotes_and_long_token():
    cfg = SegmenterConfig(max_words=2, max_chars_cjk=4)
    t = 'He said "stop." Then abcdefghij went.'
    # 'abcdefghij' counts as 3 words (runs of 4 characters)
    assert texts(segment_spans(t, cfg), t) == ["He said ", '"stop." ', "Then abcd", "efghij ", "went."]


def test_default_is_100_words_and_deterministic():
    words = " ".join(f"w{i}" for i in range(250))  # one 250-word sentence: hard split 100/100/50
    doc = Document("d", words)
    segs = segment_document(doc, SegmenterConfig())
    assert [len(s.text.split()) for s in segs] == [100, 100, 50]
    assert [(s.index, s.doc_id) for s in segs] == [(0, "d"), (1, "d"), (2, "d")]
    assert segs == segment_document(doc, SegmenterConfig())


def _random_text(rng: random.Random) -> str:
    atoms = ["word", "Longerword", "a", ".", "!", "?", " ", "  ", "\n", "\n\n", "\t", "\u3000", "漢", "字。",
             "テスト", "！", "x" * 300, "”", ")", "  \n \n ", "é", "😀", "Dr.", "3.14", "\r\n"]
    return "".join(rng.choice(atoms) + (" " if rng.random() < 0.5 else "") for _ in range(rng.randint(0, 400)))


@pytest.mark.parametrize("cfg", [SegmenterConfig(), SegmenterConfig(max_words=3, max_chars_cjk=5),
                                 SegmenterConfig(max_words=1, max_chars_cjk=1),
                                 SegmenterConfig(max_words=10, min_words=4)])
def test_tiles_exactly_and_respects_budget_on_many_inputs(cfg):
    rng = random.Random(0)
    for _ in range(300):
        t = _random_text(rng)
        doc = Document("r", t)
        segs = segment_document(doc, cfg)
        if not t:
            assert segs == []
            continue
        assert segs[0].start == 0 and segs[-1].end == len(t)
        assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
        assert "".join(s.text for s in segs) == t
        assert all(t[s.start:s.end] == s.text and s.end > s.start for s in segs)
        assert all(weight(s.text, cfg) <= cfg.max_words + 1e-9 for s in segs)
        # whitespace belongs to the preceding segment: no segment but the first starts with it
        assert all(not s.text[0].isspace() for s in segs[1:])


def test_min_words_merges_short_tail():
    t = "One two three four. Five."
    assert texts(segment_spans(t, SegmenterConfig(max_words=4, min_words=1)), t) == ["One two three four. ", "Five."]
    assert texts(segment_spans(t, SegmenterConfig(max_words=5, min_words=2)), t) == ["One two three four. Five."]


def test_bad_config():
    with pytest.raises(ConfigError, match="max_words"):
        SegmenterConfig(max_words=0)


def test_cost_matches_token_sum():
    from megatron_reflect.data.segment import _Budget

    cfg = SegmenterConfig(max_words=3, max_chars_cjk=5)
    budget, rng = _Budget(cfg), random.Random(1)
    for _ in range(500):
        t = _random_text(rng)
        assert budget.cost(t, 0, len(t)) == sum(c for _, _, c in budget.tokens(t, 0, len(t)))


def test_pathological_runs():
    """Long runs of terminators / whitespace (once quadratic in the sentence regex)."""
    cfg = SegmenterConfig(max_words=10, max_chars_cjk=100)
    t = "a" + "." * 20_000 + " b" + " " * 20_000 + "\n" + "!?" * 5_000 + "\u3002" * 3_000
    spans = segment_spans(t, cfg)
    assert "".join(texts(spans, t)) == t
    # the 20,001-character word 'a....' is cut into runs of max_chars_cjk characters, 10 per segment
    assert texts(spans, t)[0] == "a" + "." * 999 and spans[1] == (1000, 2000)
