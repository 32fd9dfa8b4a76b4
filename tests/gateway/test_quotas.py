"""Quota backends: the in-process one (injectable clock) and the Lua script on real Redis
(its test-only clock argument, and Redis TIME)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from core.errors import ServiceUnavailable
from store.quotas import (
    DAY_EXHAUSTED,
    HOUR_EXHAUSTED,
    OK,
    OVERRIDE_USED,
    SCRIPT,
    MemoryQuotas,
    OverrideMark,
    RedisQuotas,
    base_key,
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: a day (and hour) boundary


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def quotas(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Clock]]:
    clock = Clock(T0 + 10)
    if request.param == "memory":
        yield MemoryQuotas(clock), clock
        return
    from store.runtime import make_redis

    url = request.getfixturevalue("redis_url")
    # The production client's pool (100 connections), with a timeout generous enough for a
    # machine busy running other suites (production: 250 ms).
    redis = make_redis(url)
    redis.connection_pool.connection_kwargs.update(socket_timeout=5, socket_connect_timeout=5)
    backend = RedisQuotas(redis, test_clock=clock)
    # Bursts of 200 calls share 64 slots: on a busy 2-core machine the production 1 s wait for
    # a slot turns load into 503s ("saturated"); the property here is exactness.
    backend.slot_wait = 10.0
    await backend.prepare()
    yield backend, clock
    await redis.aclose()


async def test_hour_window_edges(quotas: tuple[Any, Clock]) -> None:
    q, clock = quotas
    clock.now = T0 + 3600 - 0.001  # last millisecond of the first hour
    for i in range(3):
        r = await q.spend("o", "u", 3, 100)
        assert r.status == OK and r.hour_used == i + 1 and r.spent
    r = await q.spend("o", "u", 3, 100)
    assert r.status == HOUR_EXHAUSTED and not r.spent and r.hour_used == 3 and r.day_used == 3
    assert r.hour_reset == T0 + 3600 and r.retry_after(r.hour_reset) == 1
    clock.now = T0 + 3600  # the next hour starts exactly here
    r = await q.spend("o", "u", 3, 100)
    assert r.status == OK and r.hour_used == 1 and r.day_used == 4
    assert r.hour_reset == T0 + 7200


async def test_day_window_edges(quotas: tuple[Any, Clock]) -> None:
    q, clock = quotas
    clock.now = T0 + 86400 - 1
    for _ in range(2):
        assert (await q.spend("o", "u", 100, 2)).status == OK
    r = await q.spend("o", "u", 100, 2)
    assert r.status == DAY_EXHAUSTED
    assert r.day_reset == T0 + 86400 and r.retry_after(r.day_reset) == 1
    clock.now = T0 + 86400
    r = await q.spend("o", "u", 100, 2)
    assert r.status == OK and r.day_used == 1 and r.hour_used == 1


async def test_day_denial_leaves_hour_unspent(quotas: tuple[Any, Clock]) -> None:
    q, clock = quotas
    clock.now = T0 + 5 * 3600 + 10
    assert (await q.spend("o", "u", 10, 1)).status == OK
    clock.now = T0 + 6 * 3600 + 10  # a new hour, same day
    for _ in range(3):
        r = await q.spend("o", "u", 10, 1)
        assert r.status == DAY_EXHAUSTED
    r = await q.check("o", "u", 10, 5)
    assert r.hour_used == 0 and r.day_used == 1


async def test_both_exhausted_reports_the_day(quotas: tuple[Any, Clock]) -> None:
    q, _ = quotas
    assert (await q.spend("o", "u", 1, 1)).status == OK
    assert (await q.spend("o", "u", 1, 1)).status == DAY_EXHAUSTED


async def test_check_is_read_only(quotas: tuple[Any, Clock]) -> None:
    q, _ = quotas
    for _ in range(5):
        r = await q.check("o", "u", 1, 1)
        assert r.status == OK and r.hour_used == 0 and not r.spent
    assert (await q.spend("o", "u", 1, 1)).status == OK
    assert (await q.check("o", "u", 1, 1)).status == DAY_EXHAUSTED


async def test_windows_are_per_org_and_agent(quotas: tuple[Any, Clock]) -> None:
    q, _ = quotas
    assert (await q.spend("o1", "u", 1, 5)).status == OK
    assert (await q.spend("o1", "u", 1, 5)).status == HOUR_EXHAUSTED
    assert (await q.spend("o2", "u", 1, 5)).status == OK
    assert (await q.spend("o1", "v", 1, 5)).status == OK


async def test_override_marked_used_once_with_the_spend(quotas: tuple[Any, Clock]) -> None:
    q, clock = quotas
    mark = OverrideMark("jti-1", int(clock.now) + 300)
    assert (await q.check("o", "u", 5, 5, mark)).status == OK  # checking does not mark
    r = await q.spend("o", "u", 5, 5, mark)
    assert r.status == OK and r.hour_used == 1
    r = await q.spend("o", "u", 5, 5, mark)
    assert r.status == OVERRIDE_USED and r.hour_used == 1 and not r.spent
    assert (await q.check("o", "u", 5, 5, mark)).status == OVERRIDE_USED
    # an exhausted budget spends nothing: the token stays unused
    other = OverrideMark("jti-2", int(clock.now) + 300)
    full = await q.spend("o", "x", 0 + 1, 1)
    assert full.status == OK
    assert (await q.spend("o", "x", 1, 1, other)).status == DAY_EXHAUSTED
    assert (await q.spend("o", "y", 1, 1, other)).status == OK


async def test_2000_concurrent_spends_admit_exactly_100(quotas: tuple[Any, Clock]) -> None:
    q, _ = quotas
    results: list[Any] = []
    for _ in range(10):
        results += await asyncio.gather(*(q.spend("o", "u", 100, 10_000) for _ in range(200)))
    assert sum(r.status == OK for r in results) == 100
    assert sum(r.status == HOUR_EXHAUSTED for r in results) == 1900


async def test_2000_concurrent_override_uses_admit_one(quotas: tuple[Any, Clock]) -> None:
    q, clock = quotas
    mark = OverrideMark("jti-race", int(clock.now) + 300)
    results: list[Any] = []
    for _ in range(5):
        results += await asyncio.gather(*(q.spend("o", "u", 10_000, 10_000, mark) for _ in range(100)))
    assert sum(r.status == OK for r in results) == 1
    assert sum(r.status == OVERRIDE_USED for r in results) == 499


# --- Redis specifics ------------------------------------------------------------------------
async def test_redis_keys_are_hash_tagged_and_expire(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        clock = Clock(T0 + 1800)
        q = RedisQuotas(redis, test_clock=clock)
        await q.spend("org-1", "bot", 5, 5, OverrideMark("j1", T0 + 2000))
        keys = sorted(k.decode() for k in await redis.keys("bq:*"))
        base = base_key("org-1", "bot")
        assert base == "bq:{org-1:bot}"
        assert keys == [f"{base}:d:{T0}", f"{base}:h:{T0}", f"{base}:ovr:j1"]
        # a window key outlives its window by a minute; the marker lives past the token's expiry
        assert await redis.ttl(f"{base}:h:{T0}") == 1800 + 60
        assert await redis.ttl(f"{base}:d:{T0}") == 86400 - 1800 + 60
        assert 200 + 60 - 1 <= await redis.pttl(f"{base}:ovr:j1") / 1000 <= 200 + 60
    finally:
        await redis.aclose()


async def test_redis_time_is_used_without_a_test_clock(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        before, _ = await redis.time()
        r = await RedisQuotas(redis).spend("o", "u", 5, 5)
        after, _ = await redis.time()
        assert r.status == OK and before <= int(r.now) <= after  # Redis's clock, read in between
        hour_start = int(r.now) - int(r.now) % 3600
        assert await redis.get(f"bq:{{o:u}}:h:{hour_start}") == b"1"
    finally:
        await redis.aclose()


async def test_noscript_falls_back_to_eval(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        q = RedisQuotas(redis, clock=Clock(T0 + 10))  # one window for both spends
        await redis.script_flush()
        assert (await q.spend("o", "u", 5, 5)).status == OK  # NOSCRIPT -> EVAL
        assert (await q.spend("o", "u", 5, 5)).hour_used == 2  # EVALSHA again
        assert (await redis.script_exists(__import__("store.quotas", fromlist=["x"]).SCRIPT_SHA)) == [True]
        assert SCRIPT.startswith("--")
    finally:
        await redis.aclose()


async def test_in_process_apps_pin_the_quota_windows(client: Any, org: Any) -> None:
    """tests/conftest.py pins every in-process app's quota clock (both backends): the windows,
    and so the reset time reported by a denial, follow the pinned instant, not the real clock —
    a run crossing a UTC hour or day boundary cannot start a fresh window mid-test."""
    from tests.conftest import QUOTA_NOW, make_key
    from tests.gateway.factories import action, add_manifest

    assert client.app.state.gateway.quotas.clock() == QUOTA_NOW
    await add_manifest(client.app.state.runtime, org.org_id, "support-bot", max_per_hour=1, max_per_day=10)
    key = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    r = await client.post("/api/v1/gateway/execute", json=action(), headers=key)
    assert r.json()["decision"] == "allow", r.text
    r = await client.post("/api/v1/gateway/execute", json=action(), headers=key)
    details = r.json()["reasons"][0]["details"]
    assert r.json()["reasons"][0]["code"] == "hourly_budget_exceeded"
    assert details["reset_at"] == "2026-01-01T01:00:00Z" and details["retry_after"] == 1800, details


async def test_a_clock_set_after_construction_is_used(quotas: tuple[Any, Clock]) -> None:
    q, _ = quotas
    q.clock = lambda: T0 + 7200 + 5
    r = await q.spend("o", "u", 5, 5)
    assert r.now == T0 + 7200 + 5 and r.hour_reset == T0 + 3 * 3600


async def test_redis_unreachable_fails_closed() -> None:
    from store.runtime import make_redis

    redis = make_redis("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        with pytest.raises(ServiceUnavailable):
            await RedisQuotas(redis).spend("o", "u", 5, 5)
        with pytest.raises(ServiceUnavailable):
            await RedisQuotas(redis).check("o", "u", 5, 5)
    finally:
        await redis.aclose()


async def test_one_round_trip_per_decision(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    calls: list[str] = []
    orig = redis.execute_command

    async def counting(*args: Any, **kw: Any) -> Any:
        calls.append(str(args[0]))
        return await orig(*args, **kw)

    redis.execute_command = counting  # type: ignore[method-assign]
    try:
        q = RedisQuotas(redis)
        await q.prepare()
        calls.clear()
        await q.spend("o", "u", 5, 5, OverrideMark("j", 2_000_000_000))
        await q.check("o", "u", 5, 5)
        assert calls == ["EVALSHA", "EVALSHA"]
    finally:
        await redis.aclose()


async def test_the_audit_event_of_the_returned_status_is_carried(quotas: tuple[Any, Clock]) -> None:
    """Both backends take ``audit`` (the QuotaBackend protocol). Redis: the script XADDs head +
    the tail of the status it returns, nothing for a status without a tail; in-process: nothing
    is carried, and the result says so (the caller records the event itself)."""
    import json

    from store.quotas import QuotaAudit

    q, _ = quotas
    stream = "bastion:test:quota-audit"
    audit = QuotaAudit(stream, b'{"event_id":"e1",', {OK: b'"decision":"allow"}', OVERRIDE_USED: b'"decision":"deny"}'})
    first = await q.spend("o", "carry", 1, 10, audit=audit)
    second = await q.spend("o", "carry", 1, 10, audit=audit)  # hour exhausted: no tail for it
    assert (first.status, second.status) == (OK, HOUR_EXHAUSTED)
    if isinstance(q, MemoryQuotas):
        assert not first.audited and not second.audited
        return
    assert first.audited and not second.audited
    entries = await q.redis.xrange(stream)
    assert [json.loads(fields[b"e"]) for _, fields in entries] == [{"event_id": "e1", "decision": "allow"}]
    assert all(set(fields) == {b"e"} for _, fields in entries)
    await q.redis.delete(stream)
