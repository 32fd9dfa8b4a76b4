"""The hash chain: ``hash_i = SHA-256(bytes(hash_{i-1}) || JCS(body_i))``.

``body_i`` is the stored event as :func:`event_body` gives it (every field of
:data:`audit.event.FIELDS`, ``seq`` included; JCS = RFC 8785 canonical JSON), ``bytes(h)`` the
32 raw bytes of a hex digest and ``hash_0`` 32 zero bytes (docs/audit.md, "What is hashed").
"""
from __future__ import annotations

import hashlib
from typing import Any

from audit.event import FIELDS
from core.canonical import canonical_json

ZERO_HASH = "0" * 64


def event_body(source: Any) -> dict[str, Any]:
    """The hashed dict of a stored event (a row or a mapping): every field of :data:`FIELDS`."""
    if isinstance(source, dict):
        return {name: source.get(name) for name in FIELDS}
    return {name: getattr(source, name) for name in FIELDS}


def chain_hash(prev_hex: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hex) + canonical_json(body)).hexdigest()
