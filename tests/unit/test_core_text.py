"""core/text.py: the one rule for text shown to people (issue 11 item 9, issue 12)."""
from __future__ import annotations

import sys
import unicodedata

import pytest

from core.text import is_clean, refused_char, text_issue

REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def test_every_control_format_and_separator_character_is_refused() -> None:
    """Every code point of Cc, Cf, Cs, Zl and Zp in this Python's Unicode database: the fixed
    ranges in core/text.py must cover them (a newer Unicode may add format characters)."""
    missing = [f"U+{cp:04X}" for cp in range(sys.maxunicode + 1)
               if unicodedata.category(chr(cp)) in REFUSED_CATEGORIES and is_clean(f"a{chr(cp)}b")]
    assert missing == []


@pytest.mark.parametrize("ch", ["\x00", "\x1b", "\t", "\n", "\r", "\x7f", "\x85", "\x9b", "\u00ad", "\u061c",
                                "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029", "\u202a",
                                "\u202e", "\u2060", "\u2066", "\u2069", "\ufeff", "\u3164", "\u034f",
                                "\U000e0041"])
def test_refused_on_one_line(ch: str) -> None:
    assert refused_char(f"ok{ch}ok") == ch
    assert text_issue(f"ok{ch}ok") is not None and f"U+{ord(ch):04X}" in text_issue(f"ok{ch}ok")  # type: ignore[operator]


@pytest.mark.parametrize("text", ["", "plain ASCII text ~!@#$%^&*()", "café – 10 € für Jürgen", "日本語のテキスト",
                                  "emoji 😀 ☕ ❤️", "Zoë\u00a0O'Brien", "עברית", "العربية"])
def test_ordinary_text_passes(text: str) -> None:
    assert is_clean(text) and text_issue(text) is None
    assert is_clean(text, multiline=True)


def test_multiline_allows_lf_crlf_and_tab_but_not_a_lone_cr() -> None:
    assert is_clean("one\ntwo\r\nthree\tfour", multiline=True)
    assert refused_char("approve\rdeny", multiline=True) == "\r"
    assert refused_char("trailing\r", multiline=True) == "\r"
    for ch in ("\x1b", "\u202e", "\u200b", "\u2028", "\x0b", "\x0c"):
        assert refused_char(f"a\n{ch}", multiline=True) == ch
    assert not is_clean("one\ntwo")  # one line by default
