"""Parse Qwen3Guard-Gen's answer format into a ``Label``.

Qwen3Guard-Gen answers a moderation request with lines such as::

    Safety: Unsafe
    Categories: Violent

(response moderation adds ``Refusal: Yes|No``, which is ignored here).  ``Categories``
may be ``None`` or a comma-separated list; the first known category is kept, matched
case-insensitively against the template's categories.  An answer without a ``Safety:``
line is unparseable and yields ``None`` so the caller can count it and apply a fallback.
"""

from __future__ import annotations

import re
from typing import Sequence

from megatron_reflect.data.types import Label
from megatron_reflect.reflection import QWEN3GUARD_CATEGORIES, Verdict

# The verdict must end its line (an echo of the options, "Safe or Unsafe", is no verdict).
_SAFETY = re.compile(r"safety\s*:\s*\**\s*(safe|unsafe|controversial)[\s.*]*$", re.IGNORECASE | re.MULTILINE)
_CATEGORIES = re.compile(r"categories\s*:\s*([^\n]*)", re.IGNORECASE)


def parse_guard_answer(answer: str, categories: Sequence[str] = QWEN3GUARD_CATEGORIES) -> Label | None:
    """The label in a Qwen3Guard-style answer, or ``None`` if it has no ``Safety:`` verdict."""
    m = _SAFETY.search(answer)
    if m is None:
        return None
    verdict = Verdict.parse(m.group(1))
    category = None
    if verdict is not Verdict.SAFE:
        c = _CATEGORIES.search(answer)
        if c is not None:
            known = {k.lower(): k for k in categories}
            for name in c.group(1).split(","):
                hit = known.get(name.strip().strip(".").lower())
                if hit is not None:
                    category = hit
                    break
    return Label(verdict, category)


def format_guard_answer(label: Label) -> str:
    """The answer Qwen3Guard-Gen would give for ``label`` (used by servers that imitate it)."""
    return f"Safety: {label.verdict.value}\nCategories: {label.category or 'None'}"


def label_or_fallback(answer: str, fallback: Verdict, stats: dict[str, int]) -> Label:
    """Parse a guard answer; an unparseable one gets ``fallback`` and is counted in ``stats``."""
    label = parse_guard_answer(answer)
    if label is None:
        stats["unparseable"] += 1
        return Label(fallback)
    return label
