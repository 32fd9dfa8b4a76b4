"""core.canonical: RFC 8785 (JCS) vectors, the form every manifest hash and audit chain hash is
computed over (clients recompute them: docs/manifests.md, docs/audit.md)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from core.canonical import canonical_json, manifest_hash, sha256_hex


def test_rfc8785_section_3_2_2_example() -> None:
    # RFC 8785, 3.2.2: whitespace removed, keys sorted, numbers in ES6 form, minimal escapes.
    source = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    assert canonical_json(source) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # RFC 8785, 3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16 order.
    source = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
              "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}
    out = json.loads(canonical_json(source))
    assert list(out) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (-0.0, "0"), (1.0, "1"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (1e-7, "1e-7"), (0.000001, "0.000001"), (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
    (9007199254740991, "9007199254740991"), (-1.5, "-1.5"), (0.1 + 0.2, "0.30000000000000004"),
])
def test_numbers_in_es6_form(value: Any, text: str) -> None:
    assert canonical_json(value) == text.encode()


def test_hashes_are_over_the_canonical_bytes() -> None:
    doc = {"b": [1, 2.0, "x"], "a": {"z": None, "y": True}}
    expected = hashlib.sha256(b'{"a":{"y":true,"z":null},"b":[1,2,"x"]}').hexdigest()
    assert sha256_hex(doc) == expected
    assert manifest_hash(doc) == "sha256:" + expected
    # key order and spacing of the input never matter
    assert manifest_hash(json.loads('{ "b" : [1, 2.0, "x"], "a": {"y": true, "z": null} }')) == manifest_hash(doc)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_have_no_canonical_form(bad: float) -> None:
    with pytest.raises(ValueError):  # rfc8785.FloatDomainError
        canonical_json({"x": bad})
