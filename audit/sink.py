"""The audit sink: hand one event over, fast, or fail.

A :class:`Sink` takes one :class:`audit.event.AuditEvent` and either has it (queued, or
written in the caller's transaction) when ``record`` returns, or raises
``core.errors.ServiceUnavailable``: the caller must then not make its change, and the gateway
must not answer "allow" (fail closed).

Implementations are registered by name (:func:`register_sink`, :func:`sink_class`):

* ``redis`` (:class:`RedisStreamSink`): one XADD to the audit stream (audit/stream.py); every
  process's writer drains it (store/audit_writer.py).
* ``queue`` (:class:`QueueSink`): an in-process bounded queue, drained by this process's writer
  (embedded mode, no Redis).
* ``transaction`` (``store.audit.TransactionSink``): appends to the organization's chain inside
  the caller's database transaction (changes made where no writer runs: the command line).

docs/audit.md ("Adding a sink") says how to add one.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from audit.event import AuditEvent
from audit.stream import FIELD, STREAM, encode
from core.errors import ServiceUnavailable


@runtime_checkable
class Sink(Protocol):
    async def record(self, event: AuditEvent) -> None:
        """Hand ``event`` over, or raise ``ServiceUnavailable``. Must not wait for a database."""


_SINKS: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register_sink(name: str) -> Callable[[T], T]:
    """Class decorator: make a sink implementation known under ``name``."""

    def add(cls: T) -> T:
        _SINKS[name] = cls
        return cls

    return add


def sink_class(name: str) -> type[Any]:
    """The implementation registered as ``name`` (KeyError names the known ones)."""
    try:
        return _SINKS[name]
    except KeyError:
        raise KeyError(f"no audit sink {name!r}; registered: {', '.join(sorted(_SINKS))}") from None


def registered_sinks() -> list[str]:
    return sorted(_SINKS)


class StreamClient(Protocol):
    """What :class:`RedisStreamSink` needs of a Redis client (redis.asyncio.Redis has it)."""

    def xadd(self, name: str, fields: Mapping[str, bytes]) -> Awaitable[Any]: ...


@register_sink("redis")
class RedisStreamSink:
    """One XADD per event to the audit stream. The client's timeouts bound how long a request
    waits for it (the fail-fast budget)."""

    def __init__(self, client: StreamClient, stream: str = STREAM):
        self.client, self.stream = client, stream

    async def record(self, event: AuditEvent) -> None:
        try:
            await self.client.xadd(self.stream, {FIELD: encode(event)})
        except Exception as exc:
            raise ServiceUnavailable(
                f"Audit trail unavailable ({type(exc).__name__}); nothing was done. Retry shortly."
            ) from exc


@register_sink("queue")
class QueueSink:
    """An in-process bounded queue (embedded mode); the writer takes events off it."""

    def __init__(self, max_queue: int = 100_000):
        self.queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=max_queue)

    async def record(self, event: AuditEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            raise ServiceUnavailable("Audit queue full; nothing was done. Retry shortly.") from None
