"""JSON bodies in: one decoder for every request body, with Bastion's own error wording.

Why not msgspec's messages as they are: they are a library's wording, and they changed between
releases ("Invalid UTF-8 encoded string" appeared in msgspec 0.23 where the contract says
"Body is not valid UTF-8."). A client that matches on ``details[].issue`` must not break when a
dependency is upgraded, so every decoder failure is translated here into a fixed sentence, and
``tests/unit/test_wire.py`` pins one example of every msgspec message form.

Duplicate keys are refused (``{"type": "delete", "type": "read"}``): msgspec, like most parsers,
keeps the last one, while a proxy in front of Bastion may act on the first; the two would then
disagree about what was authorized.
"""
from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import msgspec

from core.errors import FieldIssue, ValidationFailed

T = TypeVar("T")

_generic = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode

NOT_UTF8 = "Body is not valid UTF-8."
NOT_JSON = "Body is not valid JSON."
TOO_DEEP = "JSON nested too deeply."
DUPLICATE_KEY = "Duplicate key in a JSON object."

_AT = re.compile(r"\s*-\s*at `\$(?P<path>[^`]*)`")
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "an object",
    "array": "an array",
    "null": "null",
    "bytes": "a base64 string",
    "uuid": "a UUID",
    "datetime": "an RFC 3339 date-time",
    "date": "a date (YYYY-MM-DD)",
    "decimal": "a decimal number",
}
_COMPARISONS = {">=": "at least", "<=": "at most", ">": "greater than", "<": "less than"}
_UNITS = {"str": "characters", "array": "items", "object": "entries", "bytes": "bytes"}

# (pattern over msgspec's message without its "- at `$...`" suffix, our wording). The field a
# "missing"/"unknown" message names is appended to the path.
_FORMS: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"^Object missing required field `(?P<name>[^`]*)`$"), "This field is required."),
    (re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$"), "Unknown field."),
    (re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$"),
     lambda m: f"Must be {_kind(m['want'])}, not {_kind(m['got'])}."),
    (re.compile(r"^Expected `(?P<kind>str|array|object|bytes)` of length (?P<op>[<>]=?) (?P<n>\d+)$"),
     lambda m: _length(m["kind"], m["op"], int(m["n"]))),
    (re.compile(r"^Expected `(?P<kind>int|float|decimal)` (?P<op>[<>]=?) (?P<n>[-0-9.e+]+)$"),
     lambda m: f"Must be {_COMPARISONS[m['op']]} {m['n']}."),
    (re.compile(r"^Expected `(?P<kind>int|float|decimal)` that's a multiple of (?P<n>[-0-9.e+]+)$"),
     lambda m: f"Must be a multiple of {m['n']}."),
    (re.compile(r"^Expected `str` matching regex (?P<re>.*)$"), lambda m: f"Must match the pattern {m['re']}."),
    (re.compile(r"^Invalid enum value (?P<v>.*)$"), lambda m: f"{m['v'][:80]} is not one of the allowed values."),
    (re.compile(r"^Invalid UUID$"), "Must be a UUID."),
    (re.compile(r"^Invalid RFC3339 encoded (?P<k>datetime|date|time)$"), lambda m: f"Must be an RFC 3339 {m['k']}."),
    (re.compile(r"^Invalid base64 encoded string$"), "Must be base64."),
    (re.compile(r"^Invalid decimal string$"), "Must be a decimal number."),
    (re.compile(r"^(?:Number|Integer value) out of range$"), "Number is out of range."),
    (re.compile(r"^Invalid UTF-8 encoded string$"), "Is not valid UTF-8."),
    (re.compile(r"^Expected `[^`]+`, got `[^`]+` with a timezone.*$|^Expected `[^`]+` with.*timezone.*$"),
     "Has the wrong time zone form."),
]
# Anything else in msgspec's own voice (a future message form): never shown as is.
_MSGSPEC_VOICE = re.compile(r"`|^Expected |^Invalid |^Object |^Number |^Integer ")


def _kind(name: str) -> str:
    """msgspec's type names, a union (``str | null``) included, in words."""
    kinds = [_TYPE_NAMES.get(part.strip(), "a value of another type") for part in name.split("|")]
    return " or ".join(dict.fromkeys(kinds))


def _length(kind: str, op: str, n: int) -> str:
    unit = _UNITS[kind]
    if op == ">=" and n == 1:
        return "Must not be empty."
    if n == 1 and unit.endswith("s"):
        unit = unit[:-1]
    return f"Must have {_COMPARISONS[op]} {n} {unit}."


def _dotted(path: str) -> str:
    """``.agent.ids[0]`` -> ``agent.ids.0``; a dict value's ``[...]`` stays as ``*``."""
    path = re.sub(r"\[(\d+)\]", r".\1", path.replace("[...]", ".*"))
    return path.strip(".")


def issue_of(message: str, at: str = "") -> FieldIssue:
    """One decoder message (msgspec's, or a ``__post_init__`` check of ours) as a field and an
    issue in Bastion's wording; ``at`` prefixes the field (a body nested in a larger one)."""
    m = _AT.search(message)
    path = _dotted(m.group("path")) if m else ""
    text = _AT.sub("", message).strip()
    issue: str | None = None
    for pattern, wording in _FORMS:
        hit = pattern.match(text)
        if hit:
            name = hit.groupdict().get("name")
            if name is not None:
                path = f"{path}.{name}" if path else name
            issue = wording(hit) if callable(wording) else wording
            break
    if issue is None:
        # Our own checks raise plain sentences; a msgspec form we do not know is not shown.
        issue = "Invalid value." if _MSGSPEC_VOICE.search(text) else text
    field = ".".join(p for p in (at, path) if p) or "body"
    return FieldIssue(field[:200], issue[:500])


def _not_json(raw: bytes) -> ValidationFailed:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return ValidationFailed("Malformed request.", [FieldIssue("body", NOT_UTF8)])
    return ValidationFailed("Malformed request.", [FieldIssue("body", NOT_JSON)])


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate")
    return out


def _has_duplicate_keys(raw: bytes, doc: Any) -> bool:
    """Whether a JSON text that decoded to ``doc`` repeats a key in one of its objects.

    The cheap test: outside strings a colon appears once per object key, so in a text without
    ``\\u`` escapes the colons of ``raw`` number exactly keys + colons inside strings. The
    compact re-encoding of ``doc`` has the same count unless the decoder dropped an entry (a
    duplicate key), which makes it smaller. Anything that does not add up exactly is settled by
    a full parse that sees every pair (about 10 µs for a gateway request, against 1 µs for the
    count)."""
    if b"\\u" not in raw and raw.count(b":") == _encode(doc).count(b":"):
        return False
    try:
        json.loads(raw, object_pairs_hook=_pairs_without_duplicates)
    except ValueError:
        return True
    return False


def _duplicates_refused(raw: bytes, doc: Any) -> None:
    try:
        duplicate = _has_duplicate_keys(raw, doc)
    except RecursionError:
        raise ValidationFailed("Malformed request.", [FieldIssue("body", TOO_DEEP)]) from None
    if duplicate:
        raise ValidationFailed("Malformed request.", [FieldIssue("body", DUPLICATE_KEY)])


def loads(raw: bytes) -> Any:
    """Any JSON document; duplicate keys refused. ``raw`` must not be empty."""
    try:
        doc = _generic.decode(raw)
    except msgspec.ValidationError as exc:  # a number out of range, even untyped
        raise ValidationFailed("Request body failed validation.", [FieldIssue("body", issue_of(str(exc)).issue)]) from None
    except msgspec.DecodeError:  # (after ValidationError, its subclass)
        raise _not_json(raw) from None
    except RecursionError:
        raise ValidationFailed("Malformed request.", [FieldIssue("body", TOO_DEEP)]) from None
    _duplicates_refused(raw, doc)
    return doc


def convert(doc: Any, type_: type[T], *, at: str = "") -> T:
    """A decoded document into ``type_``; the first failure named in Bastion's wording."""
    try:
        return msgspec.convert(doc, type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed("Request body failed validation.", [issue_of(str(exc), at)]) from None
    except RecursionError:
        raise ValidationFailed("Malformed request.", [FieldIssue("body", TOO_DEEP)]) from None


def decode(raw: bytes, type_: type[T]) -> T:
    """A JSON body into ``type_`` (duplicate keys refused, errors in Bastion's wording). The
    typed decode runs first: its errors name the field exactly."""
    try:
        value = msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed("Request body failed validation.", [issue_of(str(exc))]) from None
    except msgspec.DecodeError:  # (after ValidationError, its subclass)
        raise _not_json(raw) from None
    except RecursionError:
        raise ValidationFailed("Malformed request.", [FieldIssue("body", TOO_DEEP)]) from None
    _duplicates_refused(raw, loads(raw))
    return value
