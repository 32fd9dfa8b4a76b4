"""The sink and the writer: every event once, one chain per org, checkpoints, restarts."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from audit.chain import ZERO_HASH, chain_hash, event_body
from audit.checkpoint import verify_checkpoint
from audit.event import params_digest
from core.errors import ServiceUnavailable
from store import audit as repo
from tests.audit.helpers import checkpoints, event, rows, running_sink

ORG = "org-1"


async def test_events_are_written_once_in_order_with_a_valid_chain(settings_factory: Any) -> None:
    async with running_sink(settings_factory()) as (runtime, sink):
        for i in range(5):
            await sink.record(event(ORG, i))
        await sink.flush()
        stored = await rows(runtime, ORG)
        assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
        assert [r.request_id for r in stored] == [f"req-{i}" for i in range(5)]
        prev = ZERO_HASH
        for r in stored:
            assert r.hash == chain_hash(prev, event_body(r))
            prev = r.hash
        result = await repo.verify_org(runtime.sessions, ORG, runtime.keys)
        assert result.valid and result.checked == 5, result


async def test_params_only_hashed_by_default(settings_factory: Any) -> None:
    async with running_sink(settings_factory()) as (runtime, sink):
        await sink.record(event(ORG, 1, params={"to": "a@b.c"}, include_params=sink.include_params))
        await sink.flush()
        (r,) = await rows(runtime, ORG)
        assert r.params is None
        assert r.params_hash == params_digest({"to": "a@b.c"})
    async with running_sink(settings_factory(audit_include_params=True)) as (runtime, sink):
        await sink.record(event(ORG, 2, params={"to": "a@b.c"}, include_params=sink.include_params))
        await sink.flush()
        r = (await rows(runtime, ORG))[-1]
        assert r.params == {"to": "a@b.c"}


async def test_thousand_concurrent_appends_make_one_chain(settings_factory: Any) -> None:
    async with running_sink(settings_factory(audit_checkpoint_every=100), batch_size=64) as (runtime, sink):
        async def record(i: int) -> None:
            # A burst may be shed with 503 (no free Redis connection within the fail-fast budget
            # on a busy machine): retry like a client. The property is one gap-free chain.
            for _ in range(50):
                try:
                    return await sink.record(event(ORG, i))
                except ServiceUnavailable:
                    await asyncio.sleep(0.05)
            raise AssertionError("audit trail unavailable for 50 retries")

        await asyncio.gather(*(record(i) for i in range(1000)))
        await sink.flush()
        stored = await rows(runtime, ORG)
        assert [r.seq for r in stored] == list(range(1, 1001))
        assert len({r.event_id for r in stored}) == 1000
        result = await repo.verify_org(runtime.sessions, ORG, runtime.keys)
        assert result.valid and result.checked == 1000, result
        cps = [c.seq for c in await checkpoints(runtime, ORG)]
        assert cps[:10] == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_two_writers_in_parallel_do_not_fork_the_chain(backend: str, settings_factory: Any) -> None:
    """Two processes' writers (own engines, own queues or consumers) append to one org."""
    for redis_url in (None, settings_factory().redis_url):
        org = f"org-{redis_url is None}"
        settings = settings_factory(redis_url=redis_url)
        async with running_sink(settings, batch_size=16) as (rt1, s1), running_sink(settings, batch_size=16) as (rt2, s2):
            await asyncio.gather(*((s1 if i % 2 else s2).record(event(org, i)) for i in range(1000)))
            await s1.flush()
            await s2.flush()
            stored = await rows(rt1, org)
            assert [r.seq for r in stored] == list(range(1, 1001))
            assert len({r.event_id for r in stored}) == 1000
            if redis_url is not None:
                assert s1.written > 0 and s2.written > 0  # both consumers really wrote
            result = await repo.verify_org(rt1.sessions, org, rt1.keys)
            assert result.valid and result.checked == 1000, result


async def test_time_based_checkpoint_while_active(settings_factory: Any) -> None:
    async with running_sink(settings_factory(audit_checkpoint_every=1000), checkpoint_age=0.0) as (runtime, sink):
        for i in range(3):
            await sink.record(event(ORG, i))
        await sink.flush()
        for _ in range(200):
            cps = await checkpoints(runtime, ORG)
            if cps and cps[-1].seq == 3:
                break
            await asyncio.sleep(0.02)
        assert cps and cps[-1].seq == 3
        claims = verify_checkpoint(cps[-1].token, runtime.keys.public_key, ORG)
        assert claims["hash"] == (await rows(runtime, ORG))[-1].hash


async def test_stop_flushes_the_queue(settings_factory: Any) -> None:
    settings = settings_factory()
    async with running_sink(settings, tick=5.0) as (runtime, sink):
        for i in range(50):
            await sink.record(event(ORG, i))
    # The context manager stopped the sink; read with a fresh runtime.
    async with running_sink(settings) as (runtime2, _):
        assert len(await rows(runtime2, ORG)) == 50


async def test_record_fails_closed_when_it_cannot_queue(settings_factory: Any) -> None:
    async with running_sink(settings_factory(), max_queue=1) as (runtime, sink):
        await sink.stop()
        with pytest.raises(ServiceUnavailable):
            await sink.record(event(ORG, 1))
        await sink.start()


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_record_fails_closed_when_redis_is_unreachable(backend: str, settings_factory: Any) -> None:
    async with running_sink(settings_factory()) as (runtime, sink):
        from audit.sink import sink_class
        from store.runtime import make_redis

        # The process's Redis stream sink, on a Redis nobody listens on.
        real, unreachable = sink._sink, make_redis("redis://127.0.0.1:1/0")
        sink._sink = sink_class("redis")(unreachable)
        try:
            with pytest.raises(ServiceUnavailable):
                await sink.record(event(ORG, 1))
        finally:
            await unreachable.aclose()
            sink._sink = real


@pytest.mark.parametrize("backend", ["sqlite"])  # one backend is what this tests
async def test_embedded_queue_full_fails_closed(backend: str, settings_factory: Any) -> None:
    async with running_sink(settings_factory(), max_queue=2) as (runtime, sink):
        await sink.kill()  # no writer draining
        sink._accepting = True
        await sink.record(event(ORG, 1))
        await sink.record(event(ORG, 2))
        with pytest.raises(ServiceUnavailable):
            await sink.record(event(ORG, 3))
        sink._accepting = False
        await sink._drain_queue_final()
        assert len(await rows(runtime, ORG)) == 2


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_entries_left_by_a_dead_writer_are_written_on_restart(backend: str, settings_factory: Any) -> None:
    """Events XADDed and read by a writer that died before XACK: the next writer writes them."""
    from redis.asyncio import Redis

    from audit.stream import FIELD, GROUP, STREAM, encode

    settings = settings_factory()
    r = Redis.from_url(settings.redis_url)
    try:
        try:
            await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except Exception:
            pass
        sent = [event(ORG, i) for i in range(30)]
        for e in sent[:20]:
            await r.xadd(STREAM, {FIELD: encode(e)})
        # The dead writer read the first 20 and never acknowledged them.
        got = await r.xreadgroup(GROUP, "dead-writer", {STREAM: ">"}, count=100)
        assert len(got[0][1]) == 20
        for e in sent[20:]:  # and 10 more arrived after it died, never delivered
            await r.xadd(STREAM, {FIELD: encode(e)})
        # A writer that already wrote event 0 before dying (committed, not acked): not twice.
        async with running_sink(settings, redis_url=None) as (rt0, s0):
            await s0.write([sent[0]])
        async with running_sink(settings, claim_idle=3600) as (runtime, sink):
            await sink.flush()
            stored = await rows(runtime, ORG)
            assert sorted(x.request_id for x in stored) == sorted(e.request_id for e in sent)
            assert [x.seq for x in stored] == list(range(1, 31))
            pending = await r.xpending(STREAM, GROUP)
            assert pending["pending"] == 0
            assert (await repo.verify_org(runtime.sessions, ORG, runtime.keys)).valid
    finally:
        await r.aclose()
