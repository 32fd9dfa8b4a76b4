"""The change bus's pub/sub connection under Redis faults (in-process, private Redis): after a
kill and restart, or a freeze and thaw, a change published by another process arrives again
(within 5 s: asserted by make soak); stopping the bus never hangs on a frozen Redis, and a
publish to it fails with a Redis timeout instead of waiting."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.exceptions import RedisError

from store.bus import RedisChangeBus
from store.bus_messages import Change, PolicyChanged, encode
from store.runtime import make_pubsub_redis, make_redis
from tests.faults.procs import RedisServer
from tests.timing import limit

CHANNEL = "bastion:changes:0"


async def _delivered_within(bus_inbox: asyncio.Queue[Change], server: RedisServer, figure: float) -> float:
    """Publish from another client until the bus sees it; seconds until it did (fails after
    ``limit(figure)``)."""
    bound = limit(figure)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < bound:
        n += 1
        c = server.client()
        try:
            c.publish(CHANNEL, encode("another-process", PolicyChanged(org_id="probe", version=n)))
        except Exception:
            pass
        finally:
            c.close()
        try:
            msg = await asyncio.wait_for(bus_inbox.get(), 0.2)
            if msg.org_id == "probe":
                return time.monotonic() - t0
        except TimeoutError:
            continue
    raise AssertionError(f"no change delivered within {bound} s")


@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_change_bus_resubscribes_after_redis_fault(redis_server: RedisServer, fault: str) -> None:
    bus = RedisChangeBus(make_pubsub_redis(redis_server.url()), channel=CHANNEL)
    inbox: asyncio.Queue[Change] = asyncio.Queue()

    async def listener(message: Change) -> None:
        await inbox.put(message)

    bus.subscribe(listener)
    await bus.start()
    try:
        await _delivered_within(inbox, redis_server, 5.0)
        if fault == "kill":
            await asyncio.to_thread(redis_server.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis_server.start)
        else:
            redis_server.freeze()
            await asyncio.sleep(1.0)
            redis_server.thaw()
        took = await _delivered_within(inbox, redis_server, 5.0)
        print(f"bus after {fault}: delivered in {took:.2f} s")
    finally:
        await asyncio.wait_for(bus.stop(), limit(5))  # never hangs
        await bus.redis.aclose()


async def test_bus_stop_and_publish_do_not_hang_on_frozen_redis(redis_server: RedisServer) -> None:
    """Shutdown while Redis is frozen finishes, and a publish fails fast (bounded timeout)."""
    publisher = make_redis(redis_server.url())
    bus = RedisChangeBus(make_pubsub_redis(redis_server.url()), channel=CHANNEL)
    await bus.start()
    redis_server.freeze()
    try:
        bus2 = RedisChangeBus(publisher, channel=CHANNEL)
        # The client's own socket timeout ends the publish (a redis-py error); if it waited,
        # wait_for's asyncio timeout would raise instead (not a RedisError): the test fails.
        t0 = time.monotonic()
        with pytest.raises(RedisError):
            await asyncio.wait_for(bus2.publish(PolicyChanged(org_id="o", version=1)), limit(1.0))
        print(f"publish to a frozen Redis failed after {time.monotonic() - t0:.3f} s")
        await asyncio.wait_for(bus.stop(), limit(5))
    finally:
        redis_server.thaw()
        await bus.redis.aclose()
        await publisher.aclose()


async def test_unreadable_messages_are_logged_and_dropped(redis_server: RedisServer, caplog: Any) -> None:
    """Anything on the channel that is not a message of a known kind (not JSON, an unknown kind,
    a missing field, the old untyped form) is logged and dropped; the listener goes on and
    delivers the next good message. A process's own message echoed back is not delivered twice."""
    bus = RedisChangeBus(make_pubsub_redis(redis_server.url()), channel=CHANNEL)
    inbox: asyncio.Queue[Change] = asyncio.Queue()

    async def listener(message: Change) -> None:
        await inbox.put(message)

    bus.subscribe(listener)
    await bus.start()
    bad = [
        b"not json",
        b"[]",
        b'{"origin": "x", "change": {"kind": "probe", "org_id": "o"}}',
        b'{"origin": "x", "change": {"kind": "policy", "org_id": "o"}}',
        b'{"kind": "manifest", "org_id": "o", "version": 3}',
        b'{"origin": "x", "change": {"kind": "override_consumed", "org_id": "o", "jti": 5, "exp": 1.0}}',
    ]
    c = redis_server.client()
    try:
        with caplog.at_level("WARNING", logger="bastion.bus"):
            for raw in bad:
                c.publish(CHANNEL, raw)
            c.publish(CHANNEL, encode(bus.origin, PolicyChanged(org_id="own-echo", version=1)))
            c.publish(CHANNEL, encode("another-process", PolicyChanged(org_id="good", version=2)))
            got = await asyncio.wait_for(inbox.get(), limit(5.0))
        assert got == PolicyChanged(org_id="good", version=2)  # the first thing delivered
        assert inbox.empty()
        assert bus.dropped == len(bad)
        assert sum("dropped an unreadable change message" in r.getMessage() for r in caplog.records) == len(bad)
        assert bus._task is not None and not bus._task.done()  # the listener is still running
        c.publish(CHANNEL, encode("another-process", PolicyChanged(org_id="again", version=3)))
        assert (await asyncio.wait_for(inbox.get(), limit(5.0))).org_id == "again"
    finally:
        c.close()
        await asyncio.wait_for(bus.stop(), limit(5))
        await bus.redis.aclose()
