"""Password hashing: scrypt (stdlib), salted, run in worker threads through ``Hashing``."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

_N, _R, _P, _LEN = 2**14, 8, 1, 32


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        actual = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash of a random password: login with an unknown email spends the same time as a known one.
DUMMY_HASH = hash_password(os.urandom(16).hex())


class HashingBusy(Exception):
    """Too many password hashes are already waiting for a slot."""


class Hashing:
    """At most ``concurrency`` password hashes at once in this process (each scrypt takes
    ~16 MiB and a core for tens of milliseconds: unbounded, a login flood takes the machine),
    and at most ``max_waiting`` callers queued for a slot (beyond that: ``HashingBusy``).
    Callers may do more work inside ``slot()`` (a last rate-limit check, counting a failure)
    so that the next waiter sees it."""

    def __init__(self, concurrency: int, max_waiting: int | None = None):
        self.concurrency = concurrency
        self.max_waiting = max_waiting if max_waiting is not None else 32 * concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._sem.locked() and self._waiting >= self.max_waiting:
            raise HashingBusy()
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._sem.release()

    @staticmethod
    async def verify(password: str, encoded: str) -> bool:
        """Inside ``slot()``. (Looked up at call time: tests replace ``verify_password``.)"""
        return await asyncio.to_thread(lambda: verify_password(password, encoded))

    @staticmethod
    async def hash(password: str) -> str:
        """Inside ``slot()``."""
        return await asyncio.to_thread(lambda: hash_password(password))
