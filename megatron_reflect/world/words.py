"""Whole-word numbers ("two hundred fifty five"): how MedSafetyWorld writes every number.

The pilot found digit tokens did not help a small model; words give each number a few
frequent tokens.  ``parse_number`` is the exact inverse used to read doses back from text.
"""

from __future__ import annotations

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_VALUE = {w: i for i, w in enumerate(_ONES)} | {w: 10 * i for i, w in enumerate(_TENS) if w}


def number_words(n: int) -> str:
    """0 <= n < 10000 in words, without "and" or hyphens."""
    if not 0 <= n < 10000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        head = _ONES[n // 100] + " hundred"
        return head if n % 100 == 0 else head + " " + number_words(n % 100)
    head = number_words(n // 1000) + " thousand"
    return head if n % 1000 == 0 else head + " " + number_words(n % 1000)


def parse_number(words: list[str]) -> tuple[int, int] | None:
    """Read a number from the start of ``words``: (value, words used), or None if none starts there."""
    total, current, used = 0, 0, 0
    for w in words:
        lw = w.lower().strip(",.;:")
        if lw in _VALUE:
            current += _VALUE[lw]
        elif lw == "hundred" and used:
            current *= 100
        elif lw == "thousand" and used:
            total += current * 1000
            current = 0
        else:
            break
        used += 1
    return (total + current, used) if used else None
