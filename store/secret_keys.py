"""The keys that seal connector secrets (core/secretbox.py), kept like the signing keys.

A JSON key set under the data dir (``secret-keys.json``), created on first use with 0600
permissions; every process of a deployment must see the same file (a mounted secret in
production, like ``signing-keys.json``). ``rotate`` adds a key and makes it the sealing key;
older keys keep opening what they sealed until ``retire``. The file is read again when its
modification time changes, so a rotation by another process is picked up.

Losing this file makes every stored connector secret unreadable (by design: the database
alone, a backup or a dump, never reveals them). Back it up apart from the database.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from core.secretbox import KEY_BYTES, SecretBox

FILE_NAME = "secret-keys.json"

_cache: dict[Path, tuple[int, SecretBox]] = {}
_lock = threading.Lock()


def key_file(settings: Any) -> Path:
    """Where the key set of ``settings`` lives (its data dir)."""
    return Path(settings.data_dir) / FILE_NAME


def _new_kid() -> str:
    return secrets.token_hex(8)


def _write(path: Path, data: dict[str, Any], *, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        # First start: O_EXCL, so two processes starting at once do not each make a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        return
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f"{path}: not a secret key set")
    return data


def _box(data: dict[str, Any]) -> SecretBox:
    keys = {str(k["kid"]): base64.b64decode(k["key"]) for k in data["keys"]}
    return SecretBox(keys, str(data["active"]))


def _create(path: Path) -> None:
    kid = _new_kid()
    data = {"active": kid, "keys": [{"kid": kid, "created_at": int(time.time()),
                                     "key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}]}
    try:
        _write(path, data, exclusive=True)
    except FileExistsError:  # another process won the race: use its key
        pass


def load_box(path: Path) -> SecretBox:
    """The key set at ``path`` (created if missing), cached until the file changes."""
    with _lock:
        if not path.exists():
            _create(path)
        mtime = path.stat().st_mtime_ns
        hit = _cache.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        box = _box(_read(path))
        _cache[path] = (mtime, box)
        return box


def box_for(settings: Any) -> SecretBox:
    return load_box(key_file(settings))


def rotate(path: Path) -> str:
    """Add a key and seal with it from now on; returns its id."""
    with _lock:
        if not path.exists():
            _create(path)
        data = _read(path)
        kid = _new_kid()
        data["keys"].append({"kid": kid, "created_at": int(time.time()),
                             "key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()})
        data["active"] = kid
        _write(path, data, exclusive=False)
        _cache.pop(path, None)
        return kid


def retire(path: Path, kid: str) -> None:
    """Remove key ``kid`` (values it sealed no longer open: re-seal them first)."""
    with _lock:
        data = _read(path)
        if data["active"] == kid:
            raise ValueError("cannot retire the active key; rotate first")
        kept = [k for k in data["keys"] if k["kid"] != kid]
        if len(kept) == len(data["keys"]):
            raise KeyError(kid)
        data["keys"] = kept
        _write(path, data, exclusive=False)
        _cache.pop(path, None)
