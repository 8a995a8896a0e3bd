"""The oracle labeler: labels that come with the record (pre-labelled corpora, MedSafetyWorld).

A record carries either a whole-document label (``label`` or ``verdict``, plus optional
``category``), or ``labels``: a list of ``{"start", "end", "verdict", "category"}``
character spans.  A segment takes the worst verdict (Unsafe > Controversial > Safe)
among the spans that overlap it (``span.start < seg.end and seg.start < span.end``), with
the category of that worst span (the first such span in the list); Safe if none overlaps.
Cost: O(segments x spans of the document).
"""

from __future__ import annotations

from typing import Any, Sequence

from megatron_reflect.data.labelers.base import SEVERITY
from megatron_reflect.data.types import Document, Label, Segment
from megatron_reflect.errors import DataError
from megatron_reflect.reflection import Verdict


def _verdict(value: Any, doc: Document, where: str) -> Verdict:
    try:
        return Verdict.parse(str(value))
    except ValueError as e:
        raise DataError(f"{doc.source}:{doc.line}: {where}: {e}") from e


def _span_label(seg: Segment, spans: list[Any], doc: Document) -> Label:
    best: Label = Label(Verdict.SAFE)
    for i, span in enumerate(spans):
        where = f"field 'labels'[{i}]"
        if not isinstance(span, dict) or not {"start", "end", "verdict"} <= span.keys():
            raise DataError(f"{doc.source}:{doc.line}: {where} must be an object with start, end, verdict")
        start, end = span["start"], span["end"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(doc.text)):
            raise DataError(f"{doc.source}:{doc.line}: {where} has bad span [{start}, {end}) for a text of "
                            f"{len(doc.text)} characters")
        if start < seg.end and seg.start < end:
            v = _verdict(span["verdict"], doc, where)
            if SEVERITY[v] > SEVERITY[best.verdict]:
                best = Label(v, span.get("category") if v is not Verdict.SAFE else None)
    return best


class OracleLabeler:
    """Reads labels from ``Document.fields``; errors name the file, line and field."""

    name = "oracle"

    def label(self, segments: Sequence[Segment], documents: dict[str, Document]) -> list[Label]:
        out = []
        for seg in segments:
            doc = documents[seg.doc_id]
            fields = doc.fields
            if "labels" in fields:
                spans = fields["labels"]
                if not isinstance(spans, list):
                    raise DataError(f"{doc.source}:{doc.line}: field 'labels' must be a list of spans")
                out.append(_span_label(seg, spans, doc))
            elif "label" in fields or "verdict" in fields:
                key = "verdict" if "verdict" in fields else "label"
                v = _verdict(fields[key], doc, f"field '{key}'")
                out.append(Label(v, fields.get("category") if v is not Verdict.SAFE else None))
            else:
                raise DataError(f"{doc.source}:{doc.line}: the oracle labeler needs a 'labels', 'label' or "
                                f"'verdict' field (record has {sorted(fields)})")
        return out
