"""core/secretbox.py and store/secret_keys.py: sealed secrets, key ids, rotation, failing closed."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.secretbox import SecretBox, SecretUnreadable
from store import secret_keys

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def test_seal_open_and_the_value_is_not_in_the_sealed_text() -> None:
    box = SecretBox({"k1": KEY_A}, "k1")
    sealed = box.seal(b"Bearer sk-live-123", b"ctx")
    assert sealed.startswith("bsx1.k1.") and "sk-live" not in sealed
    assert box.open(sealed, b"ctx") == b"Bearer sk-live-123"
    assert box.seal(b"x", b"ctx") != box.seal(b"x", b"ctx")  # a fresh nonce each time
    assert SecretBox.kid_of(sealed) == "k1"


def test_a_wrong_key_fails_closed() -> None:
    sealed = SecretBox({"k1": KEY_A}, "k1").seal(b"secret", b"ctx")
    with pytest.raises(SecretUnreadable):
        SecretBox({"k1": KEY_B}, "k1").open(sealed, b"ctx")  # same id, other key
    with pytest.raises(SecretUnreadable):
        SecretBox({"k2": KEY_A}, "k2").open(sealed, b"ctx")  # unknown key id


def test_another_context_or_a_modified_value_fails_closed() -> None:
    box = SecretBox({"k1": KEY_A}, "k1")
    sealed = box.seal(b"secret", b"mcp_server:org-1:row-1")
    with pytest.raises(SecretUnreadable):
        box.open(sealed, b"mcp_server:org-2:row-1")
    head, body = sealed.rsplit(".", 1)
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (f"{head}.{flipped}", sealed[:-4], "bsx1.k1.", "bsx1.k1.!!!", "plain text", "bsx2.k1." + body, ""):
        with pytest.raises(SecretUnreadable):
            box.open(bad, b"mcp_server:org-1:row-1")


def test_bad_key_sets_are_refused() -> None:
    with pytest.raises(ValueError):
        SecretBox({"k1": b"short"}, "k1")
    with pytest.raises(ValueError):
        SecretBox({"k1": KEY_A}, "k2")
    with pytest.raises(ValueError):
        SecretBox({"K.1": KEY_A}, "K.1")


def test_the_key_file_is_private_rotates_and_old_values_still_open(tmp_path: Path) -> None:
    path = tmp_path / "data" / secret_keys.FILE_NAME
    box = secret_keys.load_box(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret_keys.load_box(path) is box  # cached while the file is unchanged
    old = box.seal(b"v1", b"c")
    new_kid = secret_keys.rotate(path)
    rotated = secret_keys.load_box(path)
    assert rotated.active_kid == new_kid != box.active_kid
    assert rotated.open(old, b"c") == b"v1"
    assert SecretBox.kid_of(rotated.seal(b"v2", b"c")) == new_kid
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ValueError):
        secret_keys.retire(path, new_kid)  # the active key
    secret_keys.retire(path, box.active_kid)
    with pytest.raises(SecretUnreadable):
        secret_keys.load_box(path).open(old, b"c")  # retired: fails closed
