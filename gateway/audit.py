"""The audit sink (hand an event over, fast, or fail) and the writer (drain to the database).

Two transports, one writer:

* Redis mode: events are entries of one Redis stream (:func:`stream_key`), each with a single
  field ``e`` holding the event as JSON (:func:`encode`). Gateway decisions XADD it from the
  quota Lua script they already run (no extra round trip)::

      -- KEYS[n] = audit.stream_key(), ARGV[m] = audit.encode(event)
      redis.call('XADD', KEYS[n], '*', 'e', ARGV[m])

  Management changes and anything else call :meth:`AuditSink.record` (one XADD). Every process
  runs a writer in the consumer group :data:`GROUP`: ``XREADGROUP`` in batches, append to the
  database, ``XACK`` + ``XDEL`` only after the commit. On start (and every ``claim_idle``
  seconds) entries left pending by a dead writer are taken over with ``XAUTOCLAIM`` and written.
  A re-delivered entry is written once (the append skips a known ``event_id``).
* Embedded mode (no Redis): an in-process bounded queue; the writer drains it the same way.
  Stopping the sink flushes it.

Fail closed: :meth:`AuditSink.record` raises ``ServiceUnavailable`` when the event cannot be
queued (Redis unreachable, queue full, sink stopped); callers must not answer "allow" then.

Redis Cluster: the stream is one key, so a script that also touches the quota keys of an agent
(hash tag ``{org:uapk}``) would cross slots. ``stream_key(org_id, uapk_id)`` names a per-agent
stream with the same hash tag, but the writer reads only the single stream today: on a cluster,
either teach the writer the per-agent streams or keep the audit XADD out of the quota script
(``record``, one more round trip). Bastion targets a single Redis (or Sentinel).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime
from typing import Any, Iterable

from core.clock import utcnow
from core.errors import ServiceUnavailable
from store import audit as repo
from store.runtime import Runtime

log = logging.getLogger("bastion.audit")

STREAM = "bastion:audit:events"
GROUP = "bastion-audit-writers"
FIELD = "e"

# Event kinds.
EVALUATE = "gateway.evaluate"
EXECUTE = "gateway.execute"


def stream_key(org_id: str | None = None, uapk_id: str | None = None) -> str:
    """The Redis stream the events go to. With ``org_id`` and ``uapk_id``: the stream that shares
    the agent's quota hash tag (Redis Cluster; see the module doc)."""
    if org_id is not None and uapk_id is not None:
        return f"bq:{{{org_id}:{uapk_id}}}:audit"
    return STREAM


def encode(event: dict[str, Any]) -> bytes:
    """The stream entry's ``e`` field: the event as compact UTF-8 JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def decode(raw: bytes | str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an audit entry must be a JSON object")
    return value


# Quota statuses of store/lua/quota.lua -> the deny reason the pipeline gives for them.
_QUOTA_DENIALS = {
    1: ("hourly_budget_exceeded", "Hourly budget of {limit} actions exhausted.", "hour"),
    2: ("budget_exceeded", "Daily budget of {limit} actions exhausted.", "day"),
    3: ("override_token_already_used", "The override token was already used.", None),
}


def finalize(event: dict[str, Any], fields: dict[Any, Any]) -> dict[str, Any]:
    """A decision event XADDed by the quota script carries the outcome that holds if the quota
    admits it, plus the script's status ``q``: a non-zero status turns it into that denial."""
    raw = fields.get(b"q", fields.get("q"))
    if raw is None:
        return event
    status = int(raw)
    if status == 0 or status not in _QUOTA_DENIALS:
        return event
    code, message, window = _QUOTA_DENIALS[status]
    limits = (event.get("details") or {}).get("limits") or {}
    limit = limits.get(window) if window else None
    details: dict[str, Any] = {"capability": event.get("capability")}
    if window:
        details.update({"limit": limit, "remaining": 0, "window": window})
    out = dict(event)
    out["decision"] = "deny"
    out["reasons"] = [{"code": code, "message": message.format(limit=limit), "details": details}]
    return out


def request_id_of(request: Any) -> str | None:
    state = getattr(request, "scope", {}).get("state", {})
    rid = state.get("request_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else None


async def record_change(
    request: Any, caller: Any, kind: str, *, org_id: str | None = None, details: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """One management change (manifest transition, approval decision, key, member, token...):
    call it inside the change's transaction, before the commit, so that a change that cannot be
    audited is not made (``ServiceUnavailable``)."""
    org = org_id or getattr(caller, "org_id", None) or getattr(getattr(caller, "principal", None), "org_id", None)
    sink = getattr(request.app.state, "audit", None)
    if sink is None:
        raise ServiceUnavailable("The audit trail is not running; nothing was done.")
    await sink.record(build_event(
        org_id=str(org), kind=kind, actor=actor_of(caller), request_id=request_id_of(request),
        details=details, **fields,
    ))


def actor_of(who: Any) -> str | None:
    """``api_key:<id> (<name>)`` or ``user:<email>`` from a Principal or Caller (httpkit.auth).

    Every other record (policy version author, manifest events, approvals' decided_by, tokens'
    issued_by) names a key by its name: the audit trail gives the id, which is unique and
    stays, and that name, so its events and those records can be matched."""
    principal = getattr(who, "principal", who)
    if principal is None:
        return None
    if getattr(principal, "kind", None) == "api_key":
        name = getattr(principal, "actor", None)
        return f"api_key:{principal.key_id} ({name})" if name else f"api_key:{principal.key_id}"
    return f"user:{getattr(principal, 'actor', None) or getattr(principal, 'user_id', '')}"


def build_event(
    *,
    org_id: str,
    kind: str,
    actor: str | None = None,
    uapk_id: str | None = None,
    agent_id: str | None = None,
    capability: str | None = None,
    decision: str | None = None,
    reasons: Iterable[Any] | None = None,
    policy_version: str | None = None,
    request_id: str | None = None,
    interaction_id: str | None = None,
    params: Any = None,
    has_params: bool = False,
    include_params: bool = False,
    details: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An audit event (any kind). ``params_hash`` is set when ``has_params`` (or params given);
    the params themselves only with ``include_params`` (BASTION_AUDIT_INCLUDE_PARAMS)."""
    with_params = has_params or params is not None
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "org_id": org_id,
        "kind": kind,
        "actor": actor,
        "uapk_id": uapk_id,
        "agent_id": agent_id,
        "capability": capability,
        "decision": decision,
        "reasons": [_reason(r) for r in reasons] if reasons is not None else None,
        "policy_version": policy_version,
        "request_id": request_id,
        "interaction_id": interaction_id,
        "params_hash": repo.params_digest(params) if with_params else None,
        "params": repo.jcs_safe(params) if (include_params and with_params) else None,
        "details": repo.jcs_safe(details) if details else None,
        "created_at": repo.format_ts(created_at or utcnow()),
    }


def _reason(r: Any) -> Any:
    if hasattr(r, "as_dict"):
        return r.as_dict()
    return r


def build_decision_event(
    decision: Any,
    *,
    org_id: str,
    kind: str,
    req: Any,
    actor: str | None,
    request_id: str | None,
    interaction_id: str | None,
    include_params: bool = False,
    approval_id: str | None = None,
) -> dict[str, Any]:
    """The event of one gateway decision (``gateway.pipeline.Decision``) for ``req``
    (``GatewayActionRequest``). ``kind`` is :data:`EVALUATE` or :data:`EXECUTE`."""
    action = getattr(req, "action", None)
    params = getattr(action, "params", None)
    details: dict[str, Any] = {}
    if getattr(action, "amount", None) is not None:
        details["amount"] = action.amount
    if getattr(action, "currency", None) is not None:
        details["currency"] = action.currency
    if approval_id:
        details["approval_id"] = approval_id
    override = getattr(decision, "override", None)
    if override is not None and getattr(override, "approval_id", None):
        details["override_approval_id"] = override.approval_id
    return build_event(
        org_id=org_id,
        kind=kind,
        actor=actor,
        uapk_id=getattr(req, "uapk_id", None),
        agent_id=getattr(req, "agent_id", None),
        capability=getattr(decision, "capability", None),
        decision=getattr(decision, "decision", None),
        reasons=getattr(decision, "reasons", None) or [],
        policy_version=getattr(decision, "policy_version", None),
        request_id=request_id,
        interaction_id=interaction_id,
        params=params if params is not None else {},
        has_params=True,
        include_params=include_params,
        details=details or None,
        created_at=getattr(decision, "timestamp", None),
    )


class AuditSink:
    """``app.state.audit``. ``record`` queues; the writer task appends to the chain.

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
        redis_url: str | None = ...,  # type: ignore[assignment]
    ):
        self.runtime = runtime
        self.settings = runtime.settings
        self.redis_url = runtime.settings.redis_url if redis_url is ... else redis_url
        self.batch_size = batch_size
        self.checkpoint_age = checkpoint_age
        self.tick = tick
        self.claim_idle = claim_idle
        self.prune_interval = prune_interval
        self.block_ms = block_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.include_params = runtime.settings.audit_include_params
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_queue)
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

    async def record(self, event: dict[str, Any]) -> None:
        """Queue one event. Raises ``ServiceUnavailable`` when it cannot be queued."""
        if not self._accepting:
            raise ServiceUnavailable("The audit trail is not accepting events; nothing was done.")
        if self.redis_mode:
            try:
                await self._writer_redis.xadd(STREAM, {FIELD: encode(event)})
            except Exception as exc:
                raise ServiceUnavailable(
                    f"Audit trail unavailable ({type(exc).__name__}); nothing was done. Retry shortly."
                ) from exc
            return
        try:
            self._queue.put_nowait(dict(event))
        except asyncio.QueueFull:
            raise ServiceUnavailable("Audit queue full; nothing was done. Retry shortly.") from None

    # --- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        # The writer's own small pool: its appends and locks never take connections from the
        # request path (and the request path's engine sees no writer statements).
        from store.db import make_engine, make_sessionmaker

        pool = {} if self.settings.is_sqlite else {"pool_size": 2, "max_overflow": 2}
        self._engine = make_engine(self.settings.database_url, **pool)
        self._sessions = make_sessionmaker(self._engine)
        if self.redis_mode:
            from redis.asyncio import BlockingConnectionPool, Redis

            # Own pool for XADD: waits (briefly) for a free connection under a burst instead of
            # failing, and stays apart from the quota calls' pool.
            # Timeouts as the quota calls' (store.runtime.make_redis): a decision or change whose
            # event cannot be queued answers 503 within the fail-fast budget, not after 1-3 s.
            pool = BlockingConnectionPool.from_url(
                self.redis_url, max_connections=64, timeout=self.settings.redis_timeout_ms / 1000,
                socket_timeout=self.settings.redis_timeout_ms / 1000,
                socket_connect_timeout=self.settings.redis_timeout_ms / 1000, retry_on_timeout=False,
                health_check_interval=0,
            )
            self._writer_redis = Redis(connection_pool=pool, retry=None)
            self._owns_writer_redis = True
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
    def coverage(self) -> repo.Coverage:
        """The checkpoint rule this writer keeps (and signs into its checkpoints)."""
        return repo.Coverage(self.settings.audit_checkpoint_every, self.checkpoint_age)

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
            except asyncio.TimeoutError:
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

    async def flush(self, timeout: float = 30.0) -> None:
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
                except asyncio.TimeoutError:
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

    async def write(self, events: list[dict[str, Any]]) -> int:
        """Append a batch (any orgs) in arrival order: one transaction per org."""
        by_org: dict[str, list[dict[str, Any]]] = {}
        for raw in events:
            e = repo.normalize(raw)
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
        except asyncio.TimeoutError:
            return
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        await self._write_until_done(batch)
        for _ in batch:
            self._queue.task_done()

    async def _write_until_done(self, batch: list[dict[str, Any]]) -> None:
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
            batch = []
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
        ids, events = [], []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields:  # deleted while pending
                continue
            raw = fields.get(FIELD.encode(), fields.get(FIELD))
            try:
                events.append(finalize(decode(raw), fields))
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


def sink_of(app_or_request: Any) -> AuditSink:
    app = getattr(app_or_request, "app", app_or_request)
    return app.state.audit  # type: ignore[no-any-return]


async def start_audit(app: Any) -> None:
    sink = AuditSink(app.state.runtime)
    app.state.audit = sink
    await sink.start()


async def stop_audit(app: Any) -> None:
    sink = getattr(app.state, "audit", None)
    if sink is not None:
        await sink.stop()
