"""Secrets at rest: AES-256-GCM under a key that has an id, so keys can rotate.

Connectors hold credentials (an upstream's ``Authorization`` header, a stdio server's API
token). The database stores them only sealed::

    bsx1.<kid>.<base64url(nonce || ciphertext || tag)>

* ``kid`` names the key that sealed the value: after a rotation, new values are sealed with
  the new key and old ones still open with the old key until it is retired.
* The *context* (associated data, e.g. ``b"mcp_server:<org>:<id>"``) is authenticated but not
  stored: a sealed value copied into another row, another organization or another field does
  not open there.
* Opening fails closed: an unknown key id, a wrong key, a modified value or a wrong context
  raise :class:`SecretUnreadable`, never return bytes.

The key material itself lives in a file like the signing keys (store/secret_keys.py); this
module does no I/O.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "bsx1"
KEY_BYTES = 32
_NONCE = 12
_KID = re.compile(r"\A[a-z0-9]{1,32}\Z", re.ASCII)


class SecretUnreadable(Exception):
    """A sealed value that cannot be opened with the keys at hand (never its content)."""


class SecretBox:
    def __init__(self, keys: Mapping[str, bytes], active_kid: str):
        for kid, key in keys.items():
            if not _KID.match(kid):
                raise ValueError(f"key id {kid!r}: 1-32 lowercase letters or digits")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid}: must be {KEY_BYTES} bytes")
        if active_kid not in keys:
            raise ValueError(f"the active key {active_kid!r} is not in the key set")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active_kid = active_kid

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, plaintext: bytes, context: bytes) -> str:
        nonce = os.urandom(_NONCE)  # random 96-bit nonces: fine far below 2^32 values per key
        sealed = self._keys[self.active_kid].encrypt(nonce, plaintext, context)
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{PREFIX}.{self.active_kid}.{body}"

    def open(self, value: str, context: bytes) -> bytes:
        parts = value.split(".") if isinstance(value, str) else []
        if len(parts) != 3 or parts[0] != PREFIX:
            raise SecretUnreadable("not a sealed value")
        aead = self._keys.get(parts[1])
        if aead is None:
            raise SecretUnreadable(f"sealed with key {parts[1][:32]!r}, which this process does not have")
        try:
            raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        except (binascii.Error, ValueError):
            raise SecretUnreadable("not a sealed value") from None
        if len(raw) < _NONCE + 16:
            raise SecretUnreadable("not a sealed value")
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], context)
        except InvalidTag:
            raise SecretUnreadable("the value does not open with its key in this context") from None

    @staticmethod
    def kid_of(value: str) -> str | None:
        """The key id a sealed value names (to find values still sealed with an old key)."""
        parts = value.split(".")
        return parts[1] if len(parts) == 3 and parts[0] == PREFIX else None
