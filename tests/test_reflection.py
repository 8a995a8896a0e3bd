"""The reflection format: rendering, parsing, stripping and metadata codes."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_reflect.reflection import (
    DEFAULT_TEMPLATE,
    VERDICT_FLAG,
    Reflection,
    ReflectionTemplate,
    Verdict,
    is_reflection,
    is_verdict_token,
    meta_code,
)


def test_default_template_matches_srp() -> None:
    text, (a, b) = DEFAULT_TEMPLATE.render(Reflection(Verdict.SAFE))
    assert text == " <think> Safe </think> " and text[a:b] == "Safe"
    text, (a, b) = DEFAULT_TEMPLATE.render(Reflection(Verdict.UNSAFE, "Violent"))
    assert text == " <think> Unsafe: Violent </think> " and text[a:b] == "Unsafe"
    assert DEFAULT_TEMPLATE.prefix() == " <think> "


def test_parse_and_strip_round_trip() -> None:
    refls = [Reflection(Verdict.SAFE), Reflection(Verdict.UNSAFE, "PII"), Reflection(Verdict.CONTROVERSIAL, "Jailbreak")]
    text = "First." + "".join(DEFAULT_TEMPLATE.render(r)[0] + f"part {i}." for i, r in enumerate(refls))
    assert DEFAULT_TEMPLATE.parse(text) == refls
    assert DEFAULT_TEMPLATE.strip(text) == "First. part 0. part 1. part 2."


def test_custom_template() -> None:
    t = ReflectionTemplate(open_tag="[R]", close_tag="[/R]", unsafe="{verdict} ({category})", categories=("overdose",))
    text, (a, b) = t.render(Reflection(Verdict.UNSAFE, "overdose"))
    assert text == " [R] Unsafe (overdose) [/R] " and text[a:b] == "Unsafe"
    t.validate_category("overdose")
    with pytest.raises(Exception, match="not one of"):
        t.validate_category("Violent")


def test_metadata_codes() -> None:
    codes = np.array([0, meta_code(Verdict.SAFE), meta_code(Verdict.UNSAFE, True), meta_code(Verdict.CONTROVERSIAL)],
                     dtype=np.uint8)
    assert is_reflection(codes).tolist() == [False, True, True, True]
    assert is_verdict_token(codes).tolist() == [False, False, True, False]
    assert codes[2] == 2 | VERDICT_FLAG
    assert Verdict.parse(" unsafe ") is Verdict.UNSAFE
    with pytest.raises(ValueError):
        Verdict.parse("harmless")
