"""The audit writer: drains the sink's events into the database (``app.state.audit``).

Two transports (audit/sink.py), one writer:

* Redis mode (``redis`` sink): events are entries of the audit stream (audit/stream.py).
  Gateway decisions XADD them from the quota Lua script; management changes call
  :meth:`AuditSink.record` (one XADD). Every process runs a writer in the consumer group
  ``GROUP``: ``XREADGROUP`` in batches, append to the database (store/audit.py), ``XACK`` +
  ``XDEL`` only after the commit. On start (and every ``claim_idle`` seconds) entries left
  pending by a dead writer are taken over with ``XAUTOCLAIM`` and written. A re-delivered entry
  is written once (the append skips a known ``event_id``).
* Embedded mode (``queue`` sink, no Redis): an in-process bounded queue; the writer drains it
  the same way. Stopping the sink flushes it.

Fail closed: :meth:`AuditSink.record` raises ``ServiceUnavailable`` when the event cannot be
queued (Redis unreachable, queue full, sink stopped); callers must not answer "allow" then.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from types import EllipsisType
from typing import Any

from audit.checkpoint import Coverage
from audit.event import AuditEvent, as_event, normalize
from audit.sink import QueueSink, Sink, sink_class
from audit.stream import FIELD, GROUP, STREAM, decode, encode, stream_key
from core.errors import ServiceUnavailable
from store import audit as repo
from store.runtime import Runtime

log = logging.getLogger("bastion.audit")


class AuditSink:
    """``app.state.audit``: the process's :class:`audit.sink.Sink` (``record`` hands over to
    the ``redis`` or ``queue`` sink) and the writer task that appends what it queued to the chain.

    Tuning (tests use small values): ``batch_size`` events per read/append, ``checkpoint_age``
    the checkpoint interval: no event stays unsigned longer (the coverage rule of
    store/audit.py; start signs what is due, stop signs every open stretch), ``claim_idle`` seconds a
    stream entry may stay pending before another writer takes it over, ``prune_interval``
    seconds between retention runs."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        batch_size: int = 500,
        max_queue: int = 100_000,
        checkpoint_age: float = 60.0,
        tick: float = 1.0,
        claim_idle: float = 30.0,
        prune_interval: float = 3600.0,
        block_ms: int = 500,
        consumer: str | None = None,
        redis_url: str | None | EllipsisType = ...,
    ):
        self.runtime = runtime
        self.settings = runtime.settings
        self.redis_url: str | None = runtime.settings.redis_url if isinstance(redis_url, EllipsisType) else redis_url
        self.batch_size = batch_size
        self.checkpoint_age = checkpoint_age
        self.tick = tick
        self.claim_idle = claim_idle
        self.prune_interval = prune_interval
        self.block_ms = block_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.include_params = runtime.settings.audit_include_params
        # The sink record() hands over to, by transport: the in-process queue now (embedded
        # mode), the Redis stream once start() has its client (audit/sink.py registers both).
        self._queue_sink: QueueSink = sink_class("queue")(max_queue)
        self._queue = self._queue_sink.queue
        self._sink: Sink | None = None if self.redis_mode else self._queue_sink
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._accepting = False
        self._reader: Any = None  # Redis client for blocking reads (no socket timeout)
        self._writer_redis: Any = None  # Redis client for XADD (record)
        self._next_checkpoint = 0.0
        self._next_claim = 0.0
        self._next_prune = 0.0
        self._prepared = False
        self._retry_pending = False  # a failed append left this consumer's entries pending
        self._engine: Any = None
        self._sessions: Any = runtime.sessions
        self.written = 0

    # --- producer side ----------------------------------------------------------------
    @property
    def redis_mode(self) -> bool:
        return self.redis_url is not None

    def stream_key(self) -> str:
        return stream_key()

    encode = staticmethod(encode)

    async def record(self, event: AuditEvent | Mapping[str, Any]) -> None:
        """Queue one event. Raises ``ServiceUnavailable`` when it cannot be queued.

        A mapping is accepted from producers that amend their event as a dict (the decision
        recorder): ``audit.event.as_event`` takes its fields."""
        if not self._accepting or self._sink is None:
            raise ServiceUnavailable("The audit trail is not accepting events; nothing was done.")
        await self._sink.record(as_event(event))

    # --- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        # The writer's own small pool: its appends and locks never take connections from the
        # request path (and the request path's engine sees no writer statements).
        from store.db import make_engine, make_sessionmaker

        pool = {} if self.settings.is_sqlite else {"pool_size": 2, "max_overflow": 2}
        self._engine = make_engine(self.settings.database_url, **pool)
        self._sessions = make_sessionmaker(self._engine)
        if self.redis_url is not None:
            from redis.asyncio import BlockingConnectionPool, Redis

            # Own pool for XADD: waits (briefly) for a free connection under a burst instead of
            # failing, and stays apart from the quota calls' pool.
            # Timeouts as the quota calls' (store.runtime.make_redis): a decision or change whose
            # event cannot be queued answers 503 within the fail-fast budget, not after 1-3 s.
            xadd_pool = BlockingConnectionPool.from_url(
                self.redis_url, max_connections=64, timeout=self.settings.redis_timeout_ms / 1000,
                socket_timeout=self.settings.redis_timeout_ms / 1000,
                socket_connect_timeout=self.settings.redis_timeout_ms / 1000, retry_on_timeout=False,
                health_check_interval=0,
            )
            self._writer_redis = Redis(connection_pool=xadd_pool, retry=None)  # type: ignore[arg-type]
            self._owns_writer_redis = True
            self._sink = sink_class("redis")(self._writer_redis, STREAM)
            # Blocking reads: the socket timeout only has to outlast the block time (a frozen
            # Redis must not hang shutdown).
            self._reader = Redis.from_url(
                self.redis_url, socket_connect_timeout=2, socket_timeout=self.block_ms / 1000 + 2.0,
                health_check_interval=0, retry=None,
            )
            try:
                await self._prepare_stream()
            except Exception as exc:  # Redis down at start: record() fails closed meanwhile
                log.warning("audit writer: Redis not ready at start; will retry",
                            extra={"fields": {"error": type(exc).__name__}})
        # A writer that died left open stretches behind: sign what is due before serving, so an
        # honest chain never has an unsigned event older than the interval (docs/audit.md).
        await self._checkpoint_due(self.checkpoint_age)
        self._accepting = True
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    @property
    def coverage(self) -> Coverage:
        """The checkpoint rule this writer keeps (and signs into its checkpoints)."""
        return Coverage(self.settings.audit_checkpoint_every, self.checkpoint_age)

    async def _checkpoint_due(self, max_age: float) -> None:
        try:
            await repo.checkpoint_if_due(self._sessions, self.runtime.keys, self.settings.issuer, max_age,
                                         every=self.coverage.every, interval=self.coverage.interval)
        except Exception:
            log.exception("audit writer: could not sign the due checkpoints")

    async def _prepare_stream(self) -> None:
        try:
            await self._reader.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # A restart: whatever a dead writer left pending is written first.
        await self._claim(min_idle_ms=0)
        self._prepared = True

    async def stop(self) -> None:
        """Stop accepting, write everything queued (embedded) or read (Redis), close."""
        self._accepting = False
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=self.block_ms / 1000 + 5.0)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception:  # pragma: no cover - logged in _run
                log.exception("audit writer failed")
            self._task = None
        try:
            if self.redis_mode:
                await self._drain_stream_final()
            else:
                await self._drain_queue_final()
            # Close every open stretch: nothing this process wrote stays unsigned while it is gone.
            await self._checkpoint_due(0.0)
        finally:
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None
            if self._reader is not None:
                await self._reader.aclose()
                self._reader = None
            if self.redis_mode and getattr(self, "_owns_writer_redis", False) and self._writer_redis is not None:
                await self._writer_redis.aclose()
            self._writer_redis = None

    async def kill(self) -> None:
        """Tests: stop without flushing (a crashed process)."""
        self._accepting = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None
        if self._reader is not None:
            await self._reader.aclose()
            self._reader = None

    async def flush(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a bound for tests and exports
        """Tests and exports: wait until everything handed over so far is in the database."""
        deadline = time.monotonic() + timeout
        if self.redis_mode:
            while time.monotonic() < deadline:
                if int(await self._writer_redis.xlen(STREAM)) == 0:
                    return
                await asyncio.sleep(0.02)
            raise TimeoutError("audit stream not drained")
        await asyncio.wait_for(self._queue.join(), timeout=max(0.0, deadline - time.monotonic()))

    # --- writer -------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                if self.redis_mode:
                    if not self._prepared:
                        await self._prepare_stream()
                    if self._retry_pending:
                        # Our own pending entries first (in order), not in claim_idle seconds.
                        await self._claim(min_idle_ms=int(self.claim_idle * 1000))
                        self._retry_pending = False
                    await self._redis_round()
                else:
                    await self._queue_round()
                await self._housekeeping()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (FLUSHDB): create it again
                    self._prepared = False
                self._retry_pending = True
                log.exception("audit writer: round failed; retrying")
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.tick
            await repo.checkpoint_if_due(self._sessions, self.runtime.keys, self.settings.issuer, self.checkpoint_age,
                                         every=self.coverage.every, interval=self.coverage.interval)
        if self.redis_mode and now >= self._next_claim:
            self._next_claim = now + self.claim_idle
            await self._claim(min_idle_ms=int(self.claim_idle * 1000))
        if self.settings.audit_retention_days > 0 and now >= self._next_prune:
            self._next_prune = now + self.prune_interval
            n = await repo.prune_all(self._sessions, self.settings.audit_retention_days,
                                     self.runtime.keys, self.settings.issuer, coverage=self.coverage)
            if n:
                log.info("audit retention pruned events", extra={"fields": {"deleted": n}})

    async def write(self, events: list[AuditEvent | dict[str, Any]]) -> int:
        """Append a batch (any orgs) in arrival order: one transaction per org."""
        by_org: dict[str, list[dict[str, Any]]] = {}
        for raw in events:
            e = normalize(raw)
            if not e.get("org_id") or not e.get("event_id"):
                log.error("audit: dropping an event without org_id/event_id", extra={"fields": {"event": str(raw)[:500]}})
                continue
            by_org.setdefault(e["org_id"], []).append(e)
        n = 0
        for org_id, items in by_org.items():
            async with self._sessions() as session, session.begin():
                n += await repo.append_events(
                    session, org_id, items, keys=self.runtime.keys, issuer=self.settings.issuer,
                    checkpoint_every=self.settings.audit_checkpoint_every, checkpoint_interval=self.checkpoint_age,
                )
        self.written += n
        return n

    # embedded
    async def _queue_round(self) -> None:
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=self.tick)
        except TimeoutError:
            return
        batch: list[AuditEvent | dict[str, Any]] = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        await self._write_until_done(batch)
        for _ in batch:
            self._queue.task_done()

    async def _write_until_done(self, batch: list[AuditEvent | dict[str, Any]]) -> None:
        """Embedded mode has no other copy: retry (with backoff) until the database takes it."""
        delay = 0.05
        while True:
            try:
                await self.write(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit writer: database append failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _drain_queue_final(self) -> None:
        while not self._queue.empty():
            batch: list[AuditEvent | dict[str, Any]] = []
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write_until_done(batch)
            for _ in batch:
                self._queue.task_done()

    # redis
    async def _redis_round(self) -> None:
        resp = await self._reader.xreadgroup(
            GROUP, self.consumer, {STREAM: ">"}, count=self.batch_size, block=self.block_ms
        )
        entries = [e for _stream, items in (resp or []) for e in items]
        if entries:
            await self._process(entries)

    async def _process(self, entries: list[Any]) -> None:
        ids: list[Any] = []
        events: list[AuditEvent | dict[str, Any]] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields:  # deleted while pending
                continue
            raw = fields.get(FIELD.encode(), fields.get(FIELD))
            try:
                events.append(decode(raw))  # the whole event: the gateway settled it
            except Exception:
                log.error("audit: undecodable stream entry dropped", extra={"fields": {"id": str(entry_id)}})
        if events:
            await self.write(events)  # raises: nothing acked, re-read later
        await self._reader.xack(STREAM, GROUP, *ids)
        await self._reader.xdel(STREAM, *ids)

    async def _claim(self, min_idle_ms: int) -> None:
        """Take over (and write) entries pending longer than ``min_idle_ms`` — a dead writer's —
        and this consumer's own pending ones (a failed append)."""
        own = await self._reader.xreadgroup(GROUP, self.consumer, {STREAM: "0"}, count=self.batch_size)
        while True:
            entries = [e for _s, items in (own or []) for e in items]
            if not entries:
                break
            await self._process(entries)
            own = await self._reader.xreadgroup(GROUP, self.consumer, {STREAM: "0"}, count=self.batch_size)
        start = "0-0"
        while True:
            resp = await self._reader.xautoclaim(
                STREAM, GROUP, self.consumer, min_idle_time=min_idle_ms, start_id=start, count=self.batch_size
            )
            start, claimed = resp[0], resp[1]
            claimed = [c for c in claimed if c is not None]
            if claimed:
                await self._process(claimed)
            if start in (b"0-0", "0-0"):
                break

    async def _drain_stream_final(self) -> None:
        if self._reader is None:
            return
        try:
            await self._claim(min_idle_ms=int(self.claim_idle * 1000))
            for _ in range(1000):
                resp = await self._reader.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=self.batch_size)
                entries = [e for _s, items in (resp or []) for e in items]
                if not entries:
                    break
                await self._process(entries)
        except Exception:
            log.exception("audit writer: final drain failed; pending entries stay in Redis")


async def start_audit(app: Any) -> None:
    sink = AuditSink(app.state.runtime)
    app.state.audit = sink
    await sink.start()


async def stop_audit(app: Any) -> None:
    sink = getattr(app.state, "audit", None)
    if sink is not None:
        await sink.stop()
