"""The records that flow between the data stages; each stage reads one and writes the next.

``Document`` (reader) -> ``Segment`` (segmenter) -> ``Label`` (labeler, stored apart) ->
``Piece`` (renderer) -> tokens + uint8 metadata (tokenizer/writer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from megatron_reflect.reflection import Reflection, Verdict


@dataclass(frozen=True)
class Document:
    """One corpus record.  ``source``/``line`` locate it for error messages and stats.

    ``fields`` keeps the record's other keys; the oracle labeler reads its labels there:
    ``label`` / ``verdict`` (+ ``category``) for a document-level label, or ``labels``, a
    list of ``{"start", "end", "verdict", "category"}`` character spans.
    """

    doc_id: str
    text: str
    source: str = ""
    line: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """A contiguous piece of a document: ``document.text[start:end] == text``."""

    doc_id: str
    index: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Label:
    verdict: Verdict
    category: str | None = None
    score: float | None = None  # probability of the verdict (or of Unsafe), when the labeler has one

    def reflection(self) -> Reflection:
        return Reflection(self.verdict, self.category)


@dataclass(frozen=True)
class Piece:
    """Rendered text: ordinary text, or a reflection (whose verdict word the tokenizer marks)."""

    text: str
    reflection: Reflection | None = None


class Labeler(Protocol):
    """Batched safety labeler: one Label per segment, same order.

    ``documents`` maps doc_id to its Document for labelers that need the record (oracle)
    or the preceding context.
    """

    name: str

    def label(self, segments: Sequence[Segment], documents: dict[str, Document]) -> list[Label]: ...
