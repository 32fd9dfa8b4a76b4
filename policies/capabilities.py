"""The capability grammar and its matcher, shared by manifests, rules and the gateway.

A capability is ``resource:action``; each segment is ``[a-z0-9_-]+`` or a whole ``*``.
A ``*`` segment matches exactly one whole segment: ``crm:*`` matches ``crm:read`` but not
``crmx:read``; ``*:read`` matches ``email:read``. Nothing else is special: no prefixes, no
regular expressions (Casbin's ``keyMatch2`` would let ``crm:delete`` match ``crm:update``,
and ``regexMatch`` is not anchored at the end).
"""
from __future__ import annotations

import re

SEGMENT = re.compile(r"\A(?:[a-z0-9_-]+|\*)\Z", re.ASCII)  # \Z: "$" would accept a trailing newline
MAX_LEN = 128


def is_valid_pattern(value: object) -> bool:
    """A capability or pattern: two segments, each of the grammar or a whole ``*``."""
    if not isinstance(value, str) or not value or len(value) > MAX_LEN or not value.isascii():
        return False
    parts = value.split(":")
    return len(parts) == 2 and all(SEGMENT.match(p) for p in parts)


def is_concrete(value: object) -> bool:
    """A capability an action can need: valid and without wildcards."""
    return is_valid_pattern(value) and "*" not in value  # type: ignore[operator]


def matches(pattern: str, capability: str) -> bool:
    """Does ``pattern`` (possibly with ``*`` segments) grant ``capability``?"""
    p_res, _, p_act = pattern.partition(":")
    c_res, _, c_act = capability.partition(":")
    return (p_res == "*" or p_res == c_res) and (p_act == "*" or p_act == c_act)


def matches_any(patterns: list[str] | tuple[str, ...] | frozenset[str], capability: str) -> bool:
    return any(matches(p, capability) for p in patterns)


def casbin_match(capability: str, pattern: str) -> bool:
    """The same matcher, registered as a Casbin function (``capMatch(r.obj, p.obj)``)."""
    return is_valid_pattern(pattern) and is_valid_pattern(capability) and matches(pattern, capability)


def covers(granting: str, requested: str) -> bool:
    """Is every capability that ``requested`` can match also matched by ``granting``?

    Used when narrowing (a token may ask for ``crm:*`` only if the manifest grants ``crm:*``
    or ``*:*``; ``crm:read`` alone does not cover it). Segment by segment this is exactly
    ``matches``: a ``*`` in ``requested`` is only equal to a ``*`` in ``granting``."""
    return matches(granting, requested)


def covered_by_any(grants: list[str] | tuple[str, ...], requested: str) -> bool:
    return any(covers(g, requested) for g in grants)
