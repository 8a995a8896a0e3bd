"""Helpers shared by the labelers: the error type, and verdict severity.

Severity order (worst first) is Unsafe > Controversial > Safe: when several labels
cover one segment (spans of an oracle, several answers) the worst wins.
"""

from __future__ import annotations

from typing import Sequence

from megatron_reflect.errors import ReflectError
from megatron_reflect.reflection import Verdict

SEVERITY: dict[Verdict, int] = {Verdict.SAFE: 0, Verdict.CONTROVERSIAL: 1, Verdict.UNSAFE: 2}


class LabelerError(ReflectError):
    """A labeler cannot label (unreachable endpoint, missing model, unusable answer)."""


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    return max(verdicts, key=SEVERITY.__getitem__, default=Verdict.SAFE)
