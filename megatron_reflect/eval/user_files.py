"""The user's own evaluation data: Q/A files for finetuning attacks, labelled texts for classification.

Why: the paper attacks by finetuning on harmful Q/A in HEx-PHI's style and on benign Q/A in
GSM8K's style, and a researcher classifies their own labelled texts; the packaged sets stay
the defaults, these files replace them.  Both readers fail on the first bad record with its
file and line (an evaluation set must be exactly what the user gave), like
``data.read_prompt_file``.  Cost: one JSON decode per line.

* Q/A files: anything ``posttrain/chat.py`` reads (JSONL / Parquet, plain, .gz or .zst;
  ``messages`` conversations, ``prompt``/``response``, or GSM8K's own ``question``/``answer``);
  every conversation is one training example (all its assistant turns trained).
* labelled texts: JSONL or CSV with ``prompt`` (or ``text``), an optional ``response`` (the
  label is then on the answer), and a label column (``unsafe``, ``label``, ``harmful`` or
  ``verdict``: a boolean, 0/1 or Safe/Unsafe/Controversial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_reflect.errors import DataError
from megatron_reflect.eval.data import LabelledText, user_rows

LABEL_KEYS = ("unsafe", "label", "harmful", "verdict")


def read_qa_file(path: str | Path, limit: int | None = None) -> list[list[dict[str, Any]]]:
    """Conversations (message dicts) of a user Q/A file, in file order (strict)."""
    from megatron_reflect.posttrain.chat import read_conversations

    convs, _ = read_conversations(path, strict=True, limit=limit)
    return [[{"role": m.role, "content": m.content} for m in c.messages] for c in convs]


def _label(row: dict, where: str) -> bool:
    from megatron_reflect.posttrain.prepare import parse_label
    from megatron_reflect.reflection import Verdict

    key = next((k for k in LABEL_KEYS if k in row and row[k] not in (None, "")), None)
    if key is None:
        raise DataError(f"{where}: no label field (one of {list(LABEL_KEYS)})")
    try:
        return parse_label(row[key]) is not Verdict.SAFE
    except ValueError as e:
        raise DataError(f"{where}: field '{key}': {e}") from e


def _item(row: Any, where: str, default_id: str) -> LabelledText:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object")
    text = row.get("prompt", row.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: expected a non-empty string field 'prompt' (or 'text')")
    response = row.get("response") or ""
    if not isinstance(response, str):
        raise DataError(f"{where}: field 'response' must be a string")
    return LabelledText(str(row.get("id") or default_id), text.strip(), response.strip(), _label(row, where))


def read_labelled_file(path: str | Path, limit: int | None = None) -> list[LabelledText]:
    """Labelled texts of a user file (JSONL or CSV), in file order; both classes must occur."""
    out = [_item(row, where, default_id) for row, where, default_id in user_rows(path, "labelled file")]
    if not out:
        raise DataError(f"{path}: no labelled texts")
    out = out if limit is None else out[:limit]
    if len({t.unsafe for t in out}) < 2:
        raise DataError(f"{path}: every text has the same label; classification needs both safe and unsafe")
    return out
