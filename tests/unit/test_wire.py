"""core.wire: every decoder failure in Bastion's own words, duplicate keys refused.

Pure: no database, no Redis. One example of every msgspec message form is pinned here, so an
upgrade of msgspec that changes its wording fails this file instead of changing the contract."""
from __future__ import annotations

import datetime
import json
import uuid
from typing import Annotated, Any, Literal

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core import wire
from core.errors import FieldIssue, ValidationFailed


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    a: int
    s: Annotated[str, msgspec.Meta(max_length=3)] = "x"
    p: Annotated[str, msgspec.Meta(pattern="^[a-z]+$")] = "x"
    e: Literal["x", "y"] = "x"
    n: Annotated[int, msgspec.Meta(ge=0)] = 0
    m: Annotated[float, msgspec.Meta(le=10)] = 0
    ne: list[Annotated[str, msgspec.Meta(min_length=1)]] = []
    few: Annotated[list[int], msgspec.Meta(max_length=1)] = []
    u: uuid.UUID | None = None
    t: datetime.datetime | None = None
    f: float = 0.0
    d: dict[str, int] = {}
    inner: Inner | None = None


@pytest.mark.parametrize(
    "body, field, issue",
    [
        (b'{"a": "x"}', "a", "Must be an integer, not a string."),
        (b"{}", "a", "This field is required."),
        (b'{"a": 1, "z": 1}', "z", "Unknown field."),
        (b'{"a": 1, "s": "abcd"}', "s", "Must have at most 3 characters."),
        (b'{"a": 1, "p": "AB"}', "p", "Must match the pattern '^[a-z]+$'."),
        (b'{"a": 1, "e": "q"}', "e", "'q' is not one of the allowed values."),
        (b'{"a": 1, "n": -1}', "n", "Must be at least 0."),
        (b'{"a": 1, "m": 11}', "m", "Must be at most 10.0."),
        (b'{"a": 1, "ne": [""]}', "ne.0", "Must not be empty."),
        (b'{"a": 1, "few": [1, 2]}', "few", "Must have at most 1 item."),
        (b'{"a": 1, "u": "zz"}', "u", "Must be a UUID."),
        (b'{"a": 1, "t": "zz"}', "t", "Must be an RFC 3339 datetime."),
        (b'{"a": 1e400}', "a", "Number is out of range."),
        (b'{"a": 1, "f": 1e400}', "f", "Number is out of range."),
        (b'{"a": 1, "d": {"k": "v"}}', "d.*", "Must be an integer, not a string."),
        (b'{"a": 1, "inner": {}}', "inner.name", "This field is required."),
        (b'{"a": 1, "inner": 3}', "inner", "Must be an object or null, not an integer."),
        (b'{"a": 1, "u": 3}', "u", "Must be a UUID or null, not an integer."),
        (b'{"a": 1, "inner": {"name": "n", "x": 1}}', "inner.x", "Unknown field."),
        (b"[1]", "body", "Must be an object, not an array."),
        (b'{"a": 1', "body", "Body is not valid JSON."),
        (b'{"a": 1}x', "body", "Body is not valid JSON."),
        (b"\xff", "body", "Body is not valid UTF-8."),
        (b'{"a": 1, "s": "\xff\xfe"}', "body", "Body is not valid UTF-8."),
        (b'{"a": 1, "a": 2}', "body", "Duplicate key in a JSON object."),
    ],
)
def test_every_decoder_message_is_ours(body: bytes, field: str, issue: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        wire.decode(body, Shape)
    assert err.value.details == [FieldIssue(field, issue)]


def test_deep_nesting_is_refused_in_our_words() -> None:
    for body in (b'{"a": ' * 5000 + b"1" + b"}" * 5000, b"[" * 5000 + b"]" * 5000):
        with pytest.raises(ValidationFailed) as err:
            wire.loads(body)
        assert err.value.details == [FieldIssue("body", "JSON nested too deeply.")]
    # Typed, the first level already has the wrong type: that is what is reported.
    with pytest.raises(ValidationFailed) as err:
        wire.decode(b'{"a": ' * 5000 + b"1" + b"}" * 5000, Shape)
    assert err.value.details == [FieldIssue("a", "Must be an integer, not an object.")]


def test_unknown_library_wording_is_never_shown() -> None:
    assert wire.issue_of("Expected `frobnicated` in some new way - at `$.x`") == FieldIssue("x", "Invalid value.")
    # Our own checks (a __post_init__ raising ValueError) keep their sentence.
    assert wire.issue_of("Amount must be at least 0. - at `$.action`") == FieldIssue(
        "action", "Amount must be at least 0."
    )


def test_convert_prefixes_the_nested_field() -> None:
    with pytest.raises(ValidationFailed) as err:
        wire.convert({"a": "x"}, Shape, at="cases.0.request")
    assert err.value.details == [FieldIssue("cases.0.request.a", "Must be an integer, not a string.")]


@pytest.mark.parametrize(
    "body",
    [
        b'{"tool": "crm", "type": "delete", "type": "read"}',
        b'{"a": "x:y", "b": {"c": 1, "c": 2}}',
        b'{"a" :1, "a": 2}',  # whitespace before a colon: the cheap count is not enough
        b'{"a\\u003a": 1, "a\\u003a": 2}',  # a colon hidden in an escape
        b'{"a": "\\u003a", "a": "b"}',
        b'[{"k": 1}, {"k": 1, "k": 1}]',
        b'{"x": {"y": {"z": 1, "z": {"w": 1}}}}',
    ],
)
def test_duplicate_keys_are_refused(body: bytes) -> None:
    with pytest.raises(ValidationFailed) as err:
        wire.loads(body)
    assert err.value.details == [FieldIssue("body", wire.DUPLICATE_KEY)]


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(alphabet=':"\\ab\u00e9 ', max_size=6))
_keys = st.text(alphabet=':"\\ab ', max_size=3)


def _render(value: Any, rnd: st.DataObject) -> str:
    """JSON text of a tree whose objects are lists of pairs (so keys may repeat), with random
    whitespace around colons and random \\u escapes in strings."""
    if isinstance(value, tuple) and value and value[0] == "obj":
        parts = []
        for k, v in value[1]:
            space = rnd.draw(st.sampled_from(["", " ", "\n"]))
            parts.append(f"{_string(k, rnd)}{space}:{_render(v, rnd)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v, rnd) for v in value) + "]"
    if isinstance(value, str):
        return _string(value, rnd)
    return json.dumps(value)


def _string(s: str, rnd: st.DataObject) -> str:
    if rnd.draw(st.booleans()):
        return json.dumps(s, ensure_ascii=True).replace(":", "\\u003a")
    return json.dumps(s, ensure_ascii=False)


_trees = st.recursive(
    _json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(st.just("obj"), st.lists(st.tuples(_keys, children), max_size=4)),
    ),
    max_leaves=12,
)


def _oracle_has_duplicates(text: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        if len({k for k, _ in pairs}) != len(pairs):
            found = True
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


@settings(max_examples=400, deadline=None)
@given(tree=_trees, rnd=st.data())
@example(tree=("obj", [("a", "b:c"), ("a", 1)]), rnd=None)  # type: ignore[arg-type]
def test_duplicate_detection_matches_a_full_parse(tree: Any, rnd: Any) -> None:
    """The cheap colon count plus its fallback agree with a parser that sees every pair."""
    text = _render(tree, rnd) if rnd is not None else '{"a":"b:c","a":1}'
    expected = _oracle_has_duplicates(text)
    try:
        wire.loads(text.encode())
        refused = False
    except ValidationFailed as exc:
        assert exc.details == [FieldIssue("body", wire.DUPLICATE_KEY)]
        refused = True
    assert refused == expected, text
