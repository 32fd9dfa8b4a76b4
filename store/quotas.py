"""Gateway quotas: ``max_actions_per_hour`` and ``max_actions_per_day`` per (org, uapk_id).

Fixed, UTC-aligned windows (the hour starting at a multiple of 3600 epoch seconds, the day at
a multiple of 86400). An execute that is allowed spends one unit of both windows, atomically
and only when both have room; a denial or escalation spends nothing. When an override token
allowed the action, the same atomic step marks its ``jti`` used (single use).

Two backends with identical results:

* ``RedisQuotas``: one round trip per decision, ``store/lua/quota.lua`` by EVALSHA (the
  script is SCRIPT LOADed at start-up; on NOSCRIPT, e.g. after a Redis restart, it falls back
  to EVAL, which also caches it again). Time comes from Redis ``TIME``, so every gateway
  process agrees on the window. Any Redis failure raises ``ServiceUnavailable``: fail closed.
* ``MemoryQuotas``: the embedded mode (no Redis). Each call runs without awaiting, so it is
  atomic on the event loop.

Both take a ``clock`` (epoch seconds; ``None`` for Redis means Redis ``TIME``), also settable
later as the ``clock`` attribute: tests pin it, so that a run crossing a UTC hour or day
boundary cannot admit more than the test expects (tests/conftest.py pins every in-process app).
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.errors import ServiceUnavailable

HOUR = 3600
DAY = 86400

OK = 0
HOUR_EXHAUSTED = 1
DAY_EXHAUSTED = 2
OVERRIDE_USED = 3
STATUSES = (OK, HOUR_EXHAUSTED, DAY_EXHAUSTED, OVERRIDE_USED)
# Where a window denial's retry_after goes in its audit tail (QuotaAudit): the quota script
# writes the number there, counted from its own clock.
RETRY_AFTER_MARK = b"@retry_after@"

SCRIPT = (Path(__file__).parent / "lua" / "quota.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def base_key(org_id: str, uapk_id: str) -> str:
    """Hash-tagged per (org, uapk): every key of one agent lives in one cluster slot."""
    return f"bq:{{{org_id}:{uapk_id}}}"


def override_key(org_id: str, uapk_id: str, jti: str) -> str:
    return f"{base_key(org_id, uapk_id)}:ovr:{jti}"


@dataclass(frozen=True, slots=True)
class OverrideMark:
    """An override token to mark used (when spending) or to look up (when checking)."""

    jti: str
    expires_at: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class QuotaResult:
    status: int  # OK | HOUR_EXHAUSTED | DAY_EXHAUSTED | OVERRIDE_USED
    hour_used: int  # after the spend, if any
    day_used: int
    hour_limit: int
    day_limit: int
    now: float  # the backend's clock, epoch seconds
    spent: bool
    audited: bool = False  # the call also handed the decision's audit event over (QuotaAudit)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def hour_reset(self) -> int:
        return (int(self.now) // HOUR + 1) * HOUR

    @property
    def day_reset(self) -> int:
        return (int(self.now) // DAY + 1) * DAY

    @property
    def hour_remaining(self) -> int:
        return max(0, self.hour_limit - self.hour_used)

    @property
    def day_remaining(self) -> int:
        return max(0, self.day_limit - self.day_used)

    def retry_after(self, reset: int) -> int:
        return max(1, math.ceil(reset - self.now))


@dataclass(frozen=True, slots=True)
class QuotaAudit:
    """The decision's audit event, for the quota call to hand over in the same step.

    The outcome depends on the status the call returns, so the caller gives one event per
    status it wants carried: ``head + tails[status]`` is that event, encoded (gateway/recorder.py
    builds them, each from a settled decision); the script XADDs it to ``stream``. A status
    without a tail is not carried (``QuotaResult.audited`` is then False: the caller records
    that outcome itself). Backends without a stream (``MemoryQuotas``) carry nothing."""

    stream: str
    head: bytes
    tails: Mapping[int, bytes]
    # A window denial's tail holds RETRY_AFTER_MARK where its retry_after goes (the script
    # counts it from its own clock) and is carried only when the script's window reset is
    # this one (the reset the gateway settled it with: hour for HOUR_EXHAUSTED, day for
    # DAY_EXHAUSTED).
    resets: Mapping[int, int] = field(default_factory=dict)


class QuotaBackend(Protocol):
    """``audit``: see :class:`QuotaAudit`; ``QuotaResult.audited`` says whether it was carried."""

    async def check(
        self, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None = None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult: ...

    async def spend(
        self, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None = None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult: ...


class RedisQuotas:
    def __init__(self, redis: Any, *, clock: Callable[[], float] | None = None,
                 test_clock: Callable[[], float] | None = None, max_in_flight: int = 64):
        self.redis = redis
        # redis-py's pool refuses (MaxConnectionsError) beyond 100 connections; queue here
        # instead, below that bound, so a burst waits a little rather than failing with 503s.
        self._slots = asyncio.Semaphore(max_in_flight)
        # After a connection failure or timeout, calls answer 503 at once for this long (then
        # the next calls probe Redis again); a call waits at most ``slot_wait`` for a slot.
        self.fail_fast_for = 0.25
        self.slot_wait = 1.0
        self._failing_until = 0.0
        # Only tests set this: it replaces Redis TIME (ARGV[5]) to pin the windows or probe
        # their edges. ``test_clock`` is its older name.
        self.clock = clock if clock is not None else test_clock

    async def prepare(self) -> None:
        """SCRIPT LOAD at start-up (best effort: EVALSHA falls back to EVAL anyway)."""
        try:
            await self.redis.script_load(SCRIPT)
        except Exception:  # pragma: no cover - Redis down at start: the first call reports it
            pass

    async def check(
        self, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None = None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult:
        return await self._run("check", org_id, uapk_id, hour_limit, day_limit, override, audit)

    async def spend(
        self, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None = None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult:
        return await self._run("spend", org_id, uapk_id, hour_limit, day_limit, override, audit)

    async def _run(
        self, mode: str, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        keys = [base_key(org_id, uapk_id)]
        if override is not None:
            keys.append(override_key(org_id, uapk_id, override.jti))
        now_arg = "" if self.clock is None else str(int(self.clock() * 1000))
        args = [mode, str(int(hour_limit)), str(int(day_limit)),
                str(override.expires_at * 1000) if override else "", now_arg]
        if audit is not None:  # the event of each status: head + tail, XADDed by the script
            keys.append(audit.stream)
            args += [audit.head, *(audit.tails.get(status, b"") for status in STATUSES)]  # type: ignore[list-item]
            args += [str(audit.resets.get(HOUR_EXHAUSTED, "")), str(audit.resets.get(DAY_EXHAUSTED, ""))]
        # Fail fast while Redis is known to be failing: with Redis frozen every slot is held for
        # a whole socket timeout, and the calls queued behind them would otherwise each wait
        # for their own timeout in turn (seconds, not the 300 ms budget of a 503).
        if time.monotonic() < self._failing_until:
            raise ServiceUnavailable("Quota store unavailable; no action was allowed. Retry shortly.")
        try:
            await asyncio.wait_for(self._slots.acquire(), self.slot_wait)
        except TimeoutError:
            raise ServiceUnavailable("Quota store saturated; no action was allowed. Retry shortly.") from None
        try:
            if time.monotonic() < self._failing_until:  # failed while this call was queued
                raise ServiceUnavailable("Quota store unavailable; no action was allowed. Retry shortly.")
            try:
                try:
                    raw = await self.redis.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
                except NoScriptError:
                    raw = await self.redis.eval(SCRIPT, len(keys), *keys, *args)
            except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
                self._failing_until = time.monotonic() + self.fail_fast_for
                raise ServiceUnavailable(
                    f"Quota store unavailable ({type(exc).__name__}); no action was allowed. Retry shortly."
                ) from exc
            except RedisError as exc:
                raise ServiceUnavailable(
                    f"Quota store unavailable ({type(exc).__name__}); no action was allowed. Retry shortly."
                ) from exc
        finally:
            self._slots.release()
        status, hour_used, day_used, now_ms, carried = (int(x) for x in raw)
        return QuotaResult(
            status, hour_used, day_used, hour_limit, day_limit, now_ms / 1000.0, mode == "spend" and status == OK,
            audited=audit is not None and carried == 1,
        )


class MemoryQuotas:
    """In-process windows for the embedded mode; same semantics as the Lua script."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        # (org, uapk) -> [hour_start, hour_used, day_start, day_used]
        self._windows: dict[tuple[str, str], list[int]] = {}
        self._used_overrides: dict[str, float] = {}  # marker key -> expiry (epoch seconds)
        self._next_sweep = 0.0

    # ``audit`` is accepted for the protocol and not carried (no stream here; the result says
    # ``audited=False``, so the caller records the event itself).
    async def check(
        self, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None = None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult:
        return self._run(False, org_id, uapk_id, hour_limit, day_limit, override)

    async def spend(
        self, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None = None,
        audit: QuotaAudit | None = None,
    ) -> QuotaResult:
        return self._run(True, org_id, uapk_id, hour_limit, day_limit, override)

    def _run(
        self, spend: bool, org_id: str, uapk_id: str, hour_limit: int, day_limit: int, override: OverrideMark | None
    ) -> QuotaResult:
        # No await in here: one call is one atomic step on the event loop.
        now = self.clock()
        now_s = int(now)
        hour_start, day_start = now_s - now_s % HOUR, now_s - now_s % DAY
        self._sweep(now)
        w = self._windows.get((org_id, uapk_id))
        hour_used = w[1] if w is not None and w[0] == hour_start else 0
        day_used = w[3] if w is not None and w[2] == day_start else 0
        marker = override_key(org_id, uapk_id, override.jti) if override else None

        def result(status: int, spent: bool = False) -> QuotaResult:
            return QuotaResult(status, hour_used, day_used, hour_limit, day_limit, now, spent)

        if marker is not None and self._used_overrides.get(marker, 0.0) > now:
            return result(OVERRIDE_USED)
        if day_used >= day_limit:
            return result(DAY_EXHAUSTED)
        if hour_used >= hour_limit:
            return result(HOUR_EXHAUSTED)
        if not spend:
            return result(OK)
        hour_used += 1
        day_used += 1
        self._windows[(org_id, uapk_id)] = [hour_start, hour_used, day_start, day_used]
        if marker is not None and override is not None:
            self._used_overrides[marker] = max(override.expires_at + 60, now + 60)
        return result(OK, True)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        day_start = int(now) - int(now) % DAY
        for k in [k for k, w in self._windows.items() if w[2] < day_start]:
            del self._windows[k]
        for k in [k for k, exp in self._used_overrides.items() if exp <= now]:
            del self._used_overrides[k]
