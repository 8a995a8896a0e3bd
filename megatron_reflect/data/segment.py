"""Split a document into segments of at most N words, at sentence boundaries.

WHY: SRP writes one reflection after each segment, so segments must be short enough for
a verdict to be local (default 100 words) yet end where a reader would pause.  Rules:

* sentence breaks: ``.!?`` (plus closing quotes/brackets) followed by whitespace, the CJK
  terminators ``。！？`` (no space needed), and any newline;
* sentences are packed greedily into a segment while it stays within the budget;
* a sentence over the budget is hard-split at word boundaries (CJK: between characters);
* size is measured in words, where one CJK character counts as ``max_words /
  max_chars_cjk`` of a word (default 1/2), so Chinese/Japanese text is cut by characters;
  a run of more than ``max_chars_cjk`` non-space characters counts as several words;
* whitespace belongs to the preceding segment, so segments tile the text exactly.

Deterministic (no state, no randomness).  Cost: a few regex passes, linear in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from megatron_reflect.data.types import Document, Segment
from megatron_reflect.errors import ConfigError

_CJK = "\u3001-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# Linear time even on pathological input: a terminator run is only tried from its first
# character (lookbehind) and taken possessively, so a run that is not followed by
# whitespace fails once instead of once per character.
_SENTENCE_END = re.compile(
    r"(?<![.!?])[.!?]++[\"'\u201d\u2019)\]]*+\s+"  # latin terminator, closing quotes, whitespace
    r"|[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09]*\s*"  # 。！？ and closing marks
    r"|\n\s*"  # a line break (spaces before it are already in the sentence)
)
_TOKEN = re.compile(rf"\s+|[{_CJK}]\s*|[^\s{_CJK}]+\s*")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_WORD = re.compile(rf"[^\s{_CJK}]+")


@dataclass
class SegmenterConfig:
    max_words: int = 100
    max_chars_cjk: int = 200
    min_words: int = 1

    def __post_init__(self) -> None:
        if self.max_words < 1 or self.max_chars_cjk < 1 or self.min_words < 0:
            raise ConfigError(f"segmenter: max_words ({self.max_words}) and max_chars_cjk ({self.max_chars_cjk}) "
                              f"must be >= 1 and min_words ({self.min_words}) >= 0")


class _Budget:
    """Integer cost arithmetic: a word costs ``max_chars_cjk``, a CJK char ``max_words``."""

    def __init__(self, cfg: SegmenterConfig) -> None:
        self.word = cfg.max_chars_cjk
        self.cjk = cfg.max_words
        self.limit = cfg.max_words * cfg.max_chars_cjk
        self.long_word = cfg.max_chars_cjk

    def tokens(self, text: str, start: int, end: int) -> list[tuple[int, int, int]]:
        """(start, end, cost) tokens tiling ``text[start:end]``; long words pre-split."""
        out: list[tuple[int, int, int]] = []
        for m in _TOKEN.finditer(text, start, end):
            s, e = m.span()
            first = text[s]
            if first.isspace():
                out.append((s, e, 0))
            elif _CJK_CHAR.match(first):
                out.append((s, e, self.cjk))
            else:
                word_end = s + len(m.group().rstrip())
                while word_end - s > self.long_word:
                    out.append((s, s + self.long_word, self.word))
                    s += self.long_word
                out.append((s, e, self.word))
        return out

    def cost(self, text: str, start: int, end: int) -> int:
        """Same total as summing ``tokens`` (tested), without building them."""
        words = sum(-(-len(w) // self.long_word) for w in _WORD.findall(text, start, end))
        return words * self.word + len(_CJK_CHAR.findall(text, start, end)) * self.cjk


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() > start:
            spans.append((start, m.end()))
            start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def sentences(text: str) -> list[str]:
    """The non-blank sentences of ``text`` under the rules above, stripped."""
    return [text[a:b].strip() for a, b in _sentences(text) if text[a:b].strip()]


def _pack_tokens(tokens: list[tuple[int, int, int]], limit: int) -> list[tuple[int, int, int]]:
    """Greedy packing of tokens into (start, end, cost) pieces of cost <= limit."""
    pieces: list[tuple[int, int, int]] = []
    s, e, c = tokens[0]
    for ts, te, tc in tokens[1:]:
        if c + tc > limit and c > 0:
            pieces.append((s, e, c))
            s, c = ts, 0
        e, c = te, c + tc
    pieces.append((s, e, c))
    return pieces


def segment_spans(text: str, cfg: SegmenterConfig) -> list[tuple[int, int]]:
    """Character spans ``[(start, end), ...]`` of the segments of ``text`` (tiling it)."""
    if not text:
        return []
    budget = _Budget(cfg)
    pieces: list[tuple[int, int, int]] = []  # finished (start, end, cost)
    cur: tuple[int, int, int] | None = None
    for s, e in _sentences(text):
        c = budget.cost(text, s, e)
        if c > budget.limit:
            parts = _pack_tokens(budget.tokens(text, s, e), budget.limit)
            if cur is not None:
                pieces.append(cur)
            pieces.extend(parts[:-1])
            cur = parts[-1]
        elif cur is None:
            cur = (s, e, c)
        elif cur[2] + c > budget.limit and cur[2] > 0:
            pieces.append(cur)
            cur = (s, e, c)
        else:
            cur = (cur[0], e, cur[2] + c)
    assert cur is not None
    pieces.append(cur)
    # Merge a segment with fewer than min_words words into its predecessor when that fits.
    merged: list[tuple[int, int, int]] = []
    for p in pieces:
        if merged and p[2] < cfg.min_words * budget.word and merged[-1][2] + p[2] <= budget.limit:
            q = merged.pop()
            p = (q[0], p[1], q[2] + p[2])
        elif merged and merged[-1][2] == 0:  # a whitespace-only head joins the next segment
            q = merged.pop()
            p = (q[0], p[1], p[2])
        merged.append(p)
    return [(s, e) for s, e, _ in merged]


def segment_document(doc: Document, cfg: SegmenterConfig) -> list[Segment]:
    """The segments of ``doc``: ``seg[0].start == 0``, ``seg[i].end == seg[i+1].start``,
    ``seg[-1].end == len(doc.text)``, and ``doc.text[s.start:s.end] == s.text``."""
    return [Segment(doc.doc_id, i, s, e, doc.text[s:e]) for i, (s, e) in enumerate(segment_spans(doc.text, cfg))]
