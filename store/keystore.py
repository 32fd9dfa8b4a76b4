"""Ed25519 signing keys, each with a ``kid``.

Embedded default: a JSON key set under the data dir, created on first start with 0600
permissions. Production: ``BASTION_SIGNING_KEY_FILE`` names that file (a mounted secret);
a single-PEM file is also accepted. ``bastion keys rotate`` adds a key and makes it the
signing key; older keys keep verifying until retired.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    created_at: int

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


class KeyStore:
    def __init__(self, keys: list[SigningKey], active_kid: str, path: Path | None = None):
        self._keys = {k.kid: k for k in keys}
        self.active_kid = active_kid
        self.path = path
        self._mtime = path.stat().st_mtime_ns if path is not None and path.exists() else 0

    def reload_if_changed(self) -> bool:
        """Pick up ``bastion keys rotate``/``retire`` done by another process (file mtime)."""
        if self.path is None or not self.path.exists():
            return False
        mtime = self.path.stat().st_mtime_ns
        if mtime == self._mtime:
            return False
        fresh = KeyStore._load(self.path)
        self._keys, self.active_kid, self._mtime = fresh._keys, fresh.active_kid, mtime
        return True

    @property
    def signing_key(self) -> SigningKey:
        return self._keys[self.active_kid]

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        key = self._keys.get(kid) if isinstance(kid, str) else None
        return key.public if key else None

    def keys(self) -> list[SigningKey]:
        return list(self._keys.values())

    # --- persistence -------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, path: Path) -> KeyStore:
        if path.exists():
            return cls._load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls([_new_key()], "", path)
        store.active_kid = next(iter(store._keys))
        store.save()
        return store

    @classmethod
    def _load(cls, path: Path) -> KeyStore:
        raw = path.read_bytes()
        if raw.lstrip().startswith(b"-----BEGIN"):
            private = serialization.load_pem_private_key(raw, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an Ed25519 private key")
            kid = _kid_for(private)
            return cls([SigningKey(kid, private, 0)], kid, None)
        data = json.loads(raw)
        keys = [
            SigningKey(
                k["kid"],
                serialization.load_pem_private_key(k["private_pem"].encode(), password=None),  # type: ignore[arg-type]
                int(k["created_at"]),
            )
            for k in data["keys"]
        ]
        return cls(keys, data["active"], path)

    def save(self) -> None:
        if self.path is None:
            raise ValueError("this key set comes from a single PEM file and cannot be changed")
        data = {
            "active": self.active_kid,
            "keys": [
                {
                    "kid": k.kid,
                    "created_at": k.created_at,
                    "private_pem": k.private.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ).decode(),
                }
                for k in self._keys.values()
            ],
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime_ns

    def rotate(self) -> str:
        key = _new_key()
        self._keys[key.kid] = key
        self.active_kid = key.kid
        self.save()
        return key.kid

    def retire(self, kid: str) -> None:
        if kid not in self._keys:
            raise KeyError(kid)
        if kid == self.active_kid:
            raise ValueError("cannot retire the active signing key; rotate first")
        del self._keys[kid]
        self.save()


def _new_key() -> SigningKey:
    private = Ed25519PrivateKey.generate()
    return SigningKey(_kid_for(private), private, int(time.time()))


def _kid_for(private: Ed25519PrivateKey) -> str:
    import hashlib

    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_pepper(data_dir: Path, configured: str | None) -> bytes:
    """The secret that keys the API-key hash. Shared by every process of a deployment."""
    if configured:
        return configured.encode()
    path = data_dir / "api-key-pepper"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race; read its pepper
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
