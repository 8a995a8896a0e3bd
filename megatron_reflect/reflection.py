"""THE reflection format: verdicts, categories, the template and per-token metadata codes.

Every other module (renderers, the dataset, the loss, generation monitors, the exporter)
reads the format from here, so changing the template is a one-line change that flows
through preprocessing, training and evaluation.

Metadata is one uint8 per token, aligned with the token stream:

* bits 0-1 (``code & KIND_MASK``): 0 ordinary text, 1 Safe reflection, 2 Unsafe
  reflection, 3 Controversial reflection;
* bit 4 (``VERDICT_FLAG``): the token carries the start of the verdict word ("Safe",
  "Unsafe", "Controversial"); the trainer measures verdict accuracy at exactly these.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

import numpy as np

from megatron_reflect.errors import ConfigError


class Verdict(str, enum.Enum):
    SAFE = "Safe"
    UNSAFE = "Unsafe"
    CONTROVERSIAL = "Controversial"

    @classmethod
    def parse(cls, text: str) -> "Verdict":
        t = text.strip().lower()
        for v in cls:
            if t == v.value.lower():
                return v
        raise ValueError(f"not a verdict: {text!r} (expected Safe, Unsafe or Controversial)")


# Qwen3Guard's risk categories (its "Categories:" line); a world may bring its own.
QWEN3GUARD_CATEGORIES: tuple[str, ...] = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)

TEXT: int = 0
KIND_MASK: int = 0x03
VERDICT_FLAG: int = 0x10
KIND_OF_VERDICT: dict[Verdict, int] = {Verdict.SAFE: 1, Verdict.UNSAFE: 2, Verdict.CONTROVERSIAL: 3}
VERDICT_OF_KIND: dict[int, Verdict] = {k: v for v, k in KIND_OF_VERDICT.items()}


def meta_code(verdict: Verdict, verdict_token: bool = False) -> int:
    return KIND_OF_VERDICT[verdict] | (VERDICT_FLAG if verdict_token else 0)


def is_reflection(meta: np.ndarray):
    """Boolean mask of reflection tokens (works on numpy arrays and torch tensors)."""
    return (meta & KIND_MASK) != 0


def is_verdict_token(meta: np.ndarray):
    return (meta & VERDICT_FLAG) != 0


@dataclass(frozen=True)
class Reflection:
    verdict: Verdict
    category: str | None = None


@dataclass(frozen=True)
class ReflectionTemplate:
    """How a reflection is written.  Default: `` <think> Safe </think> `` and
    `` <think> Unsafe: <category> </think> `` in plain text (no new tokens), as SRP did.

    ``special_tokens``: register ``open_tag``/``close_tag`` as added special tokens in the
    tokenizer, so each is exactly one token (the model must then be built with that vocab).
    """

    open_tag: str = "<think>"
    close_tag: str = "</think>"
    safe: str = "{verdict}"
    unsafe: str = "{verdict}: {category}"
    leading_space: bool = True
    trailing_space: bool = True
    special_tokens: bool = False
    categories: tuple[str, ...] = field(default=QWEN3GUARD_CATEGORIES)

    def body(self, reflection: Reflection) -> str:
        if reflection.verdict is Verdict.SAFE or not reflection.category:
            return self.safe.format(verdict=reflection.verdict.value, category="")
        return self.unsafe.format(verdict=reflection.verdict.value, category=reflection.category)

    def render(self, reflection: Reflection) -> tuple[str, tuple[int, int]]:
        """The reflection text and the character span of its verdict word within it."""
        lead = " " if self.leading_space else ""
        trail = " " if self.trailing_space else ""
        head = f"{lead}{self.open_tag} "
        body = self.body(reflection)
        text = f"{head}{body} {self.close_tag}{trail}"
        start = len(head) + body.index(reflection.verdict.value)
        return text, (start, start + len(reflection.verdict.value))

    def prefix(self) -> str:
        """What precedes the verdict word: a model is asked for its verdict after this."""
        return (" " if self.leading_space else "") + self.open_tag + " "

    def pattern(self) -> re.Pattern[str]:
        """Regex that finds rendered reflections in text (verdict and optional category)."""
        return re.compile(
            r"\s?" + re.escape(self.open_tag) + r"\s*(Safe|Unsafe|Controversial)(?::\s*([^<]*?))?\s*"
            + re.escape(self.close_tag) + r"\s?"
        )

    def parse(self, text: str) -> list[Reflection]:
        """All reflections written in ``text``, in order."""
        return [Reflection(Verdict.parse(m.group(1)), (m.group(2) or None)) for m in self.pattern().finditer(text)]

    def strip(self, text: str) -> str:
        """``text`` with every reflection removed (what a user should see)."""
        return self.pattern().sub(" ", text).replace("  ", " ").strip()

    def validate_category(self, category: str | None) -> None:
        if category and self.categories and category not in self.categories:
            raise ConfigError(f"reflection category {category!r} is not one of {list(self.categories)}")


DEFAULT_TEMPLATE = ReflectionTemplate()
