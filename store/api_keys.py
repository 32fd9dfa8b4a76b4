"""API keys: random secrets with a recognisable prefix, stored only as a keyed hash."""
from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "bst_"


def generate_key() -> str:
    # 32 random bytes (256 bits), URL-safe; the prefix lets secret scanners recognise it.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(pepper: bytes, key: str) -> str:
    """HMAC-SHA256: a fast keyed hash suits long random keys (no dictionary to slow down)."""
    return hmac.new(pepper, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    return key[:12]
