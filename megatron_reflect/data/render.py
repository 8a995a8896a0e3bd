"""Renderers: a labelled document -> the list of text pieces that will be tokenized.

Rendering is cheap and lives apart from labelling (the expensive step), so a corpus labelled
once can be rendered again with another mode or template.  Modes:

* ``reflect``: a reflection after each segment, ``text[0:end1] + refl1 + text[end1:end2] + refl2 ...``;
  the document's own characters are kept exactly (whitespace included).
* ``filter``: the document unchanged, or dropped (``None``) when too many of its segments are
  flagged (``max_flagged`` segments with a verdict in ``verdicts`` and a score of at least
  ``min_score`` are tolerated; default: none).
* ``rewrite``: flagged segments replaced by a :class:`Rewriter` (an OpenAI-compatible endpoint for
  real corpora, or ``exact`` replacements carried by the record, as MedSafetyWorld provides).
* ``plain``: the document unchanged (the baseline).

Cost: linear in the document length; the rewrite endpoint costs one HTTP request per flagged
segment.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from megatron_reflect.data.types import Document, Label, Piece, Segment
from megatron_reflect.errors import ConfigError, DataError
from megatron_reflect.reflection import ReflectionTemplate, Verdict

MODES: tuple[str, ...] = ("reflect", "filter", "rewrite", "plain")
FLAGGED: tuple[Verdict, ...] = (Verdict.UNSAFE, Verdict.CONTROVERSIAL)


class Rewriter(Protocol):
    """Returns the safe replacement for the whole ``segment.text`` of one flagged segment."""

    name: str

    def rewrite(self, doc: Document, segment: Segment, label: Label) -> str: ...


class ExactRewriter:
    """Replacements carried by the record: ``fields["rewrites"] = [{"start", "end", "text"}, ...]``.

    Every replacement span overlapping the flagged segment is applied.  A span that crosses
    a segment boundary (a long unsafe passage cut by the segmenter) is written where it
    starts and its text removed from the following segments (which the oracle flags too, as
    they overlap the same unsafe span).  A flagged segment with no replacement is a DataError.
    """

    name = "exact"

    def __init__(self, field: str = "rewrites") -> None:
        self.field = field

    def rewrite(self, doc: Document, segment: Segment, label: Label) -> str:
        where = f"{doc.source}:{doc.line} (doc {doc.doc_id!r})"
        spans = doc.fields.get(self.field)
        if not isinstance(spans, list):
            raise DataError(f"{where}: field {self.field!r} (a list of {{start, end, text}}) is missing")
        overlapping: list[tuple[int, int, str]] = []
        for span in spans:
            try:
                start, end, text = int(span["start"]), int(span["end"]), str(span["text"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{where}: malformed entry in {self.field!r}: {span!r} ({e})") from None
            if not 0 <= start <= end <= len(doc.text):
                raise DataError(f"{where}: rewrite span [{start}, {end}) outside the text ({len(doc.text)} chars)")
            if start < segment.end and end > segment.start:
                overlapping.append((start, end, text))
        if not overlapping:
            raise DataError(f"{where}: segment {segment.index} is {label.verdict.value} but "
                            f"{self.field!r} has no replacement overlapping [{segment.start}, {segment.end})")
        out, pos = [], segment.start
        for start, end, text in sorted(overlapping):
            if start < pos and pos > segment.start:
                raise DataError(f"{where}: overlapping rewrite spans at {start}")
            out.append(doc.text[pos:max(start, pos)])
            if start >= segment.start:
                out.append(text)
            pos = min(end, segment.end)
        out.append(doc.text[pos:segment.end])
        return "".join(out)


@dataclass
class EndpointRewriter:
    """An OpenAI-compatible chat endpoint (vLLM, TGI, ...) that rewrites a passage safely.

    The segment's surrounding whitespace is kept; only its stripped text is sent.
    ``base_url`` ends before ``/chat/completions`` (e.g. ``http://host:8000/v1``).  Transient
    failures are retried with exponential backoff; a final failure is a DataError that the
    preprocessor records as a skipped document (file and line) or raises with ``--strict``.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    instruction: str = ("Rewrite the following passage so that it contains no unsafe content "
                        "(category: {category}). Keep its topic, language and length. "
                        "Answer with the rewritten passage only.")
    name: str = "openai"

    def rewrite(self, doc: Document, segment: Segment, label: Label) -> str:
        body = json.dumps({
            "model": self.model,
            "temperature": 0.0,
            "messages": [
                {"role": "system", "content": self.instruction.format(category=label.category or "unsafe")},
                {"role": "user", "content": segment.text.strip()},
            ],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read())
                text = answer["choices"][0]["message"]["content"]
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("empty answer")
                lead = segment.text[: len(segment.text) - len(segment.text.lstrip())]
                trail = segment.text[len(segment.text.rstrip()):] if segment.text.strip() else ""
                return lead + text.strip() + trail
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}"
                if e.code < 500 and e.code != 429:
                    break
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                error = f"{type(e).__name__}: {e}"
            except (KeyError, IndexError, TypeError, ValueError) as e:
                error = f"unexpected answer ({type(e).__name__}: {e})"
                break
        raise DataError(f"{doc.source}:{doc.line}: rewrite endpoint {url} failed for segment "
                        f"{segment.index} of doc {doc.doc_id!r}: {error}")


def build_rewriter(name: str, **options: object) -> Rewriter:
    if name == "exact":
        return ExactRewriter(**options)  # type: ignore[arg-type]
    if name == "openai":
        if "base_url" not in options or "model" not in options:
            raise ConfigError("the openai rewriter needs base_url and model")
        return EndpointRewriter(**options)  # type: ignore[arg-type]
    raise ConfigError(f"unknown rewriter {name!r} (expected 'exact' or 'openai')")


def _check(doc: Document, segments: list[Segment], labels: list[Label]) -> None:
    where = f"{doc.source}:{doc.line} (doc {doc.doc_id!r})"
    if len(segments) != len(labels):
        raise DataError(f"{where}: {len(segments)} segments but {len(labels)} labels")
    pos = 0
    for seg in segments:
        if seg.start != pos or seg.end < seg.start or doc.text[seg.start:seg.end] != seg.text:
            raise DataError(f"{where}: segment {seg.index} [{seg.start}, {seg.end}) does not tile the text")
        pos = seg.end
    if pos != len(doc.text):
        raise DataError(f"{where}: segments end at {pos}, the text at {len(doc.text)}")


def _flagged(label: Label, verdicts: tuple[Verdict, ...], min_score: float | None) -> bool:
    if label.verdict not in verdicts:
        return False
    return min_score is None or label.score is None or label.score >= min_score


def render(doc: Document, segments: list[Segment], labels: list[Label], mode: str,
           template: ReflectionTemplate, *, max_flagged: int = 0, min_score: float | None = None,
           verdicts: tuple[Verdict, ...] = FLAGGED, rewriter: Rewriter | None = None) -> list[Piece] | None:
    """The pieces of one rendered document, or ``None`` when the filter drops it.

    ``max_flagged``/``min_score``/``verdicts`` configure ``filter`` (and which segments
    ``rewrite`` replaces); ``rewriter`` is required by ``rewrite``.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown render mode {mode!r} (expected one of {list(MODES)})")
    if mode == "plain":
        return [Piece(doc.text)]
    _check(doc, segments, labels)
    if mode == "filter":
        n = sum(_flagged(label, verdicts, min_score) for label in labels)
        return None if n > max_flagged else [Piece(doc.text)]
    if mode == "rewrite":
        if rewriter is None:
            raise ConfigError("render mode 'rewrite' needs a rewriter ('exact' or 'openai')")
        out: list[str] = []
        for seg, label in zip(segments, labels):
            if not _flagged(label, verdicts, min_score):
                out.append(seg.text)
                continue
            out.append(rewriter.rewrite(doc, seg, label))
        return [Piece("".join(out))]
    pieces: list[Piece] = []
    rendered: dict[tuple, Piece] = {}  # a document has few distinct reflections: render each once
    for seg, label in zip(segments, labels):
        key = (label.verdict, label.category)
        piece = rendered.get(key)
        if piece is None:
            reflection = label.reflection()
            piece = rendered[key] = Piece(template.render(reflection)[0], reflection)
        pieces += [Piece(seg.text), piece]
    return pieces
