"""RFC 8785 (JCS) canonical JSON and the hashes built on it."""
from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical serialisation: sorted keys, no spaces, ES6 number format."""
    return rfc8785.dumps(value)


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def manifest_hash(document: Any) -> str:
    """``"sha256:" + hex(SHA-256(JCS(document)))`` — clients can recompute it (docs/manifests.md)."""
    return "sha256:" + sha256_hex(document)
