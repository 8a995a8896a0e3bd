"""Chat records from the user's files: Tulu-3 / OpenAI ``messages``, or ``prompt``/``response`` pairs
(also GSM8K's ``question``/``answer``).

Why: post-training data comes as JSONL or Parquet (plain, ``.gz`` or ``.zst``), in the
conversational format of Tulu-3 and the OpenAI API (``messages: [{role, content}]``, system
turns, several user turns) or as flat pairs.  This module streams such a file one record at
a time, like ``data/readers.py`` does for pretraining corpora: a malformed line, a record
without a usable conversation or a bad role becomes ``Skipped(file, line, reason)`` (counted,
listed, or raised in strict mode); only an unreadable file raises.  ``ReadPosition`` after
each record lets a killed job resume where its last committed part ended.
Cost: one JSON decode per line; memory is one record (one parquet batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from megatron_reflect.data.readers import DEFAULT_MAX_CHARS, START, ReadPosition, Skipped, iter_raw
from megatron_reflect.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    fields: dict[str, Any] = field(default_factory=dict)  # the message's other keys (e.g. a label)


@dataclass(frozen=True)
class Conversation:
    """One chat record: ``messages`` (system first if any; every assistant turn answers a user
    turn), the record's other keys in ``fields``, and where it came from."""

    id: str
    messages: tuple[Message, ...]
    source: str
    line: int
    fields: dict[str, Any] = field(default_factory=dict)


def _message(raw: Any, i: int) -> Message | str:
    if not isinstance(raw, dict):
        return f"messages[{i}] is a {type(raw).__name__}, not an object"
    role, content = raw.get("role"), raw.get("content")
    if role not in ROLES:
        return f"messages[{i}] has role {role!r}; expected one of {list(ROLES)}"
    if not isinstance(content, str):
        return f"messages[{i}] content is a {type(content).__name__}, not a string"
    return Message(role, content, {k: v for k, v in raw.items() if k not in ("role", "content") and v is not None})


def conversation(record: Any, source: str, name: str, line: int, id_key: str = "id",
                 max_chars: int = DEFAULT_MAX_CHARS) -> Conversation | Skipped:
    """Normalise one record, or say why it cannot be used."""
    if not isinstance(record, dict):
        return Skipped(source, line, f"record is a JSON {type(record).__name__}, not an object")
    record = {k: v for k, v in record.items() if v is not None}  # parquet: a null column is an absent key
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list):
            return Skipped(source, line, f"key 'messages' is a {type(raw).__name__}, not a list")
        messages: list[Message] = []
        for i, m in enumerate(raw):
            msg = _message(m, i)
            if isinstance(msg, str):
                return Skipped(source, line, msg)
            messages.append(msg)
        rest = {k: v for k, v in record.items() if k != "messages"}
    elif ("prompt" in record and "response" in record) or ("question" in record and "answer" in record):
        keys = ("prompt", "response") if "prompt" in record else ("question", "answer")  # GSM8K's own keys
        prompt, response, system = record[keys[0]], record[keys[1]], record.get("system")
        for key, value in zip(keys, (prompt, response)):
            if not isinstance(value, str):
                return Skipped(source, line, f"key '{key}' is a {type(value).__name__}, not a string")
        if system is not None and not isinstance(system, str):
            return Skipped(source, line, f"key 'system' is a {type(system).__name__}, not a string")
        messages = ([Message("system", system)] if system else []) + [Message("user", prompt),
                                                                      Message("assistant", response)]
        rest = {k: v for k, v in record.items() if k not in (*keys, "system")}
    else:
        return Skipped(source, line, "missing key 'messages' (or 'prompt' and 'response', or 'question' and 'answer')")
    for i, m in enumerate(messages):
        if m.role == "system" and i != 0:
            return Skipped(source, line, f"messages[{i}]: a system turn may only come first")
        if m.role == "assistant" and (i == 0 or messages[i - 1].role != "user"):
            return Skipped(source, line, f"messages[{i}]: an assistant turn must follow a user turn")
        if m.role != "system" and not m.content.strip():
            return Skipped(source, line, f"messages[{i}]: empty {m.role} turn")
    if not any(m.role == "assistant" for m in messages):
        return Skipped(source, line, "no assistant turn to train")
    if sum(len(m.content) for m in messages) > max_chars:
        return Skipped(source, line, f"conversation exceeds the limit of {max_chars} characters")
    raw_id = record.get(id_key)
    return Conversation(str(raw_id) if raw_id is not None else f"{name}:{line}", tuple(messages), source, line, rest)


def _chat_columns(names: list[str]) -> str | None:
    if "messages" in names or {"prompt", "response"} <= set(names) or {"question", "answer"} <= set(names):
        return None
    return "neither a 'messages' column nor 'prompt' and 'response' (or 'question' and 'answer')"


def iter_conversations(path: str | Path, id_key: str = "id", max_chars: int = DEFAULT_MAX_CHARS,
                       start: ReadPosition = START) -> Iterator[tuple[Conversation | Skipped, ReadPosition]]:
    """Stream ``(Conversation | Skipped, position after it)`` from one chat file, after ``start``."""
    path = Path(path)
    source, name = str(path), path.name
    return ((rec if isinstance(rec, Skipped) else conversation(rec, source, name, pos.line, id_key, max_chars), pos)
            for rec, pos in iter_raw(path, max_chars, start, _chat_columns, what="chat file"))


def read_conversations(path: str | Path, strict: bool = True, limit: int | None = None
                       ) -> tuple[list[Conversation], list[Skipped]]:
    """All conversations of a (small) file; strict: the first bad record raises ``DataError``."""
    out: list[Conversation] = []
    skipped: list[Skipped] = []
    for item, _ in iter_conversations(path):
        if isinstance(item, Skipped):
            if strict:
                raise item.error()
            skipped.append(item)
            continue
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no usable conversation")
    return out, skipped
