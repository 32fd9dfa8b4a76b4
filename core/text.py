"""One rule for text a person will read: approvers, administrators, auditors.

An agent (or anyone who can write a field that ends up on an approver's screen, in a terminal
or in a log viewer) must not be able to make the text say something other than what it holds:

* C0 and C1 control characters and DEL: ANSI escape sequences recolour, move the cursor or
  clear a terminal; a lone CR lets "deny" overwrite "approve" on the same line; LF fakes a
  second line in a one-line field;
* bidirectional overrides, embeddings, isolates and marks (U+202A-202E, U+2066-2069,
  U+200E/200F, U+061C): "U+202E" makes ``txt.exe`` read as ``exe.txt``;
* invisible characters (zero-width space/joiners U+200B-200D, word joiner and invisible
  operators U+2060-2064, BOM U+FEFF, soft hyphen, Mongolian vowel separator, tag characters,
  Hangul fillers, the combining grapheme joiner): two strings that look the same are not;
* line and paragraph separators (U+2028, U+2029) and lone surrogates.

That is every character of the Unicode categories Cc, Cf, Cs, Zl and Zp (checked against the
running Python's Unicode database by ``tests/unit/test_core_text.py``), plus a few invisible
letters. A field that allows several lines (an approver's notes) may hold LF, CRLF and TAB.

Validation refuses such text with 400 rather than cleaning it up: what was sent is what gets
decided, recorded and shown. Nothing here imports from the rest of Bastion.
"""
from __future__ import annotations

import re

# Ranges, not a scan of the Unicode database at import time: a fixed, reviewable list.
_REFUSED_RANGES = (
    (0x0000, 0x001F), (0x007F, 0x009F),  # Cc: C0, DEL, C1
    (0x00AD, 0x00AD), (0x034F, 0x034F),  # soft hyphen; combining grapheme joiner
    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2),
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers (blank letters)
    (0x180E, 0x180E),
    (0x200B, 0x200F),  # zero-width space, ZWNJ, ZWJ, LRM, RLM
    (0x2028, 0x202E),  # line/paragraph separators; bidi embeddings and overrides
    (0x2060, 0x2064), (0x2066, 0x206F),  # word joiner, invisible operators; bidi isolates, deprecated formats
    (0x3164, 0x3164),  # Hangul filler
    (0xD800, 0xDFFF),  # lone surrogates
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0xFFFE, 0xFFFF),
    (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)


def _char_class(ranges: tuple[tuple[int, int], ...], allowed: str = "") -> re.Pattern[str]:
    parts = []
    for lo, hi in ranges:
        # Split a range around the allowed characters (only C0 ones are ever allowed).
        cut = sorted(ord(c) for c in allowed if lo <= ord(c) <= hi)
        start = lo
        for c in cut + [hi + 1]:
            if start <= c - 1:
                parts.append(f"\\U{start:08x}" if start == c - 1 else f"\\U{start:08x}-\\U{c - 1:08x}")
            start = c + 1
    return re.compile(f"[{''.join(parts)}]")


_ONE_LINE = _char_class(_REFUSED_RANGES)
_MULTILINE = _char_class(_REFUSED_RANGES, allowed="\t\n\r")
_LONE_CR = re.compile(r"\r(?!\n)")
# Refused characters that str.isprintable() accepts (letters and marks, not format characters).
_PRINTABLE_REFUSED = "\u034f\u115f\u1160\u3164\uffa0"


def refused_char(value: str, *, multiline: bool = False) -> str | None:
    """The first character ``value`` may not hold, else None. ``multiline``: LF, CRLF and
    TAB are allowed (a lone CR is not: it rewrites the line it ends)."""
    if value.isprintable():
        # The common case, at C speed: no character of Cc, Cf, Cs, Zl, Zp (nor unassigned,
        # private-use or non-ASCII spaces, which the slower search below then allows).
        if value.isascii():
            return None
        for c in _PRINTABLE_REFUSED:  # substring search: far faster than a regex here
            if c in value:
                return c
        return None
    m = (_MULTILINE if multiline else _ONE_LINE).search(value)
    if m is not None:
        return m.group()
    if multiline and "\r" in value:
        cr = _LONE_CR.search(value)
        if cr is not None:
            return cr.group()
    return None


def text_issue(value: str, *, multiline: bool = False) -> str | None:
    """What is wrong with ``value`` as text shown to people (a sentence for a 400's
    ``details[].issue``), or None when it is fine."""
    bad = refused_char(value, multiline=multiline)
    if bad is None:
        return None
    what = "line breaks, " if bad in "\r\n\u2028\u2029" and not multiline else ""
    return (f"Must not contain {what}control, bidirectional-override or invisible characters "
            f"(found U+{ord(bad):04X}).")


def is_clean(value: str, *, multiline: bool = False) -> bool:
    return refused_char(value, multiline=multiline) is None
