"""The change bus: how every process learns that something the gateway caches has changed
(a manifest transition, a key revocation, a policy version, a token revocation).

Messages are typed (``store.bus_messages``: one Struct per kind, each saying whether it
invalidates a compiled org). Embedded mode: callbacks in this process, handed the message
object itself. Redis mode: the same local delivery at once, plus one PUBLISH of the encoded
message on one pub/sub channel; each process runs a listener task that decodes what arrives
and hands the same typed objects to its callbacks. A process ignores the copy of its own
messages that pub/sub returns (it delivered them already); a message that does not decode
(unknown kind, missing field, not JSON) is logged and dropped, never fatal to the listener.
Publishing never blocks a request for long: it is one PUBLISH.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from core.tasks import cancel
from store.bus_messages import Change, decode, encode

log = logging.getLogger("bastion.bus")

CHANNEL = "bastion:changes"
Listener = Callable[[Change], Awaitable[None]]


class ChangeBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.origin = uuid.uuid4().hex  # this bus's id on the wire

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, message: Change) -> None:
        await self._deliver(message)

    async def _deliver(self, message: Change) -> None:
        for listener in list(self._listeners):
            try:
                await listener(message)
            except Exception:  # a faulty listener must not break the publisher
                log.exception("change listener failed")

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisChangeBus(ChangeBus):
    def __init__(self, redis: Redis, channel: str = CHANNEL):
        super().__init__()
        self.redis = redis
        self.channel = channel
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.dropped = 0  # messages on the channel that did not decode (tests, operators)

    async def publish(self, message: Change) -> None:
        # Deliver locally at once (no dependence on the round trip), and to the others via Redis.
        await self._deliver(message)
        await self.redis.publish(self.channel, encode(self.origin, message))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bastion-change-bus")
        try:
            await asyncio.wait_for(self.ready.wait(), 5)
        except TimeoutError:
            log.warning("change bus not subscribed yet; continuing (version polling catches up)")

    async def received(self, data: bytes | str) -> None:
        """One raw message from the channel: decode, drop our own echo, deliver."""
        try:
            envelope = decode(data)
        except (msgspec.DecodeError, TypeError) as exc:
            # Another version of Bastion, or something else on our channel: the version poll
            # covers a change this process could not read.
            self.dropped += 1
            log.warning("dropped an unreadable change message (%s): %.200r", exc, data)
            return
        if envelope.origin != self.origin:
            await self._deliver(envelope.change)

    async def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self.ready.set()
                async for raw in pubsub.listen():
                    if raw.get("type") == "message":
                        await self.received(raw["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change bus disconnected (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        await cancel(self._task)
