"""The change bus: how every process learns that something the gateway caches has changed
(a manifest transition, a key revocation, a policy version, a token revocation).

Embedded mode: callbacks in this process. Redis mode: one pub/sub channel; each process runs
a listener task. Messages are small JSON objects ``{"kind": ..., "org_id": ..., ...}``.
Publishing never blocks a request for long: it is one PUBLISH.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from redis.asyncio import Redis

from core.tasks import cancel

log = logging.getLogger("bastion.bus")

CHANNEL = "bastion:changes"
Listener = Callable[[dict[str, Any]], Awaitable[None]]


class ChangeBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, message: dict[str, Any]) -> None:
        await self._deliver(message)

    async def _deliver(self, message: dict[str, Any]) -> None:
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

    async def publish(self, message: dict[str, Any]) -> None:
        # Deliver locally at once (no dependence on the round trip), and to the others via Redis.
        await self._deliver({**message, "_local": True})
        await self.redis.publish(self.channel, json.dumps(message))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bastion-change-bus")
        try:
            await asyncio.wait_for(self.ready.wait(), 5)
        except asyncio.TimeoutError:
            log.warning("change bus not subscribed yet; continuing (version polling catches up)")

    async def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self.ready.set()
                async for raw in pubsub.listen():
                    if raw.get("type") != "message":
                        continue
                    try:
                        message = json.loads(raw["data"])
                    except (ValueError, TypeError):
                        continue
                    if isinstance(message, dict):
                        await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change bus disconnected (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        await cancel(self._task)
