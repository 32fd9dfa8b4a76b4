"""The audit trail's SQL side: append events to an organization's chain, sign checkpoints,
prune, read, and verify the stored chain. The pure parts (event, hashing, checkpoints,
:class:`audit.verify.ChainVerifier`, the export format) live in ``audit/``.

Appends are serialized per organization: the append transaction locks the org's row in
``audit_heads`` (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite takes its database write lock
with the first statement, an ``INSERT ... ON CONFLICT DO NOTHING`` of that row), reads the head,
assigns ``seq`` and hashes (:func:`audit.chain.chain_hash`), inserts the events and moves the
head. The chain cannot fork.

Coverage (:class:`audit.checkpoint.Coverage`): a checkpoint only proves what it covers, so a
database writer who rewrites events and deletes the checkpoints from there on would otherwise
leave a "valid" chain. The writer therefore guarantees, and verification demands, that

* no stretch between two checkpoints (or after the last one) holds more than ``every`` events,
* the events of one stretch were created within ``interval`` seconds of each other, and
* no event stays without a checkpoint longer than ``interval`` seconds after its creation
  (verification allows :func:`audit.checkpoint.tail_allowance` before it calls an unsigned
  event suspicious).

The appends enforce the first two (a checkpoint is signed before an event that would break
them); the third is kept by ``audit_heads.checkpoint_at``, the time from which the next
checkpoint is due: the last checkpoint's time, moved back to the creation time of any older
event appended since. An append signs at once when that is ``interval`` old (an event that
arrives late), the writer's periodic :func:`checkpoint_if_due` does in between, and a writer
that stops signs every open stretch (:func:`checkpoint_if_due` with ``max_age=0``).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from audit.chain import ZERO_HASH, chain_hash, event_body
from audit.checkpoint import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHECKPOINT_INTERVAL,
    Coverage,
    sign_checkpoint,
    verify_tokens,
)
from audit.event import FIELDS, AuditEvent, build_event, format_ts, normalize, parse_ts
from audit.event import params_digest as params_digest  # tests/audit/test_events.py reads it from here
from audit.sink import register_sink
from audit.verify import ChainVerifier, VerifyResult
from core.clock import utcnow
from core.errors import ServiceUnavailable
from store.models import AuditCheckpoint, AuditHead
from store.models import AuditEvent as AuditRow

AUDIT_ROWS = cast(Table, AuditRow.__table__)  # Core insert: one executemany for a batch


def _too_wide(lo: datetime | None, hi: datetime | None, ts: datetime, interval: float) -> bool:
    """Would a stretch spanning [lo, hi] span more than ``interval`` seconds with ``ts`` added?"""
    if lo is None or hi is None:
        return False
    return (max(hi, ts) - min(lo, ts)).total_seconds() > interval


def change_event(org_id: str, kind: str, actor: str, details: dict[str, Any]) -> dict[str, Any]:
    """A normalized management-change event, for changes that append to the chain themselves
    (no server, so no audit writer: ``bastion bootstrap``)."""
    return normalize(build_event(org_id=org_id, kind=kind, actor=actor, details=details))


@register_sink("transaction")
class TransactionSink:
    """The in-transaction sink (:class:`audit.sink.Sink`): each event is appended to its
    organization's chain inside the caller's transaction, so the change and its event commit
    or roll back together. For changes made where no writer runs (the command line): the head
    row's lock serializes these appends with a server's writer."""

    def __init__(self, session: AsyncSession, *, keys: Any, issuer: str, coverage: Coverage | None = None):
        self.session, self.keys, self.issuer = session, keys, issuer
        self.coverage = coverage or Coverage()
        self.appended = 0

    async def record(self, event: AuditEvent) -> None:
        try:
            self.appended += await append_events(
                self.session, event.org_id, [normalize(event)], keys=self.keys, issuer=self.issuer,
                checkpoint_every=self.coverage.every, checkpoint_interval=self.coverage.interval,
            )
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(
                f"Audit trail unavailable ({type(exc).__name__}); nothing was done. Retry shortly.") from exc


# --- repository ------------------------------------------------------------------------
def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name  # type: ignore[union-attr]


async def lock_head(session: AsyncSession, org_id: str) -> AuditHead:
    """Create the org's head row if missing and lock it for the rest of the transaction."""
    now = utcnow()
    # checkpoint_at starts at the chain's creation: the first time-based checkpoint is due a
    # checkpoint interval after the first event.
    values = {"org_id": org_id, "seq": 0, "hash": ZERO_HASH, "checkpoint_seq": 0, "checkpoint_at": now, "updated_at": now}
    stmt: Any
    if _dialect(session) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(AuditHead).values(**values).on_conflict_do_nothing(index_elements=["org_id"])
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        # The first statement is a write: SQLite takes the database write lock here, before
        # the head is read (no stale read, no upgrade failure).
        stmt = sqlite_insert(AuditHead).values(**values).on_conflict_do_nothing(index_elements=["org_id"])
    await session.execute(stmt)
    q = select(AuditHead).where(AuditHead.org_id == org_id).with_for_update().execution_options(populate_existing=True)
    return (await session.execute(q)).scalar_one()


async def _sign_into(session: AsyncSession, head: AuditHead, keys: Any, issuer: str, anchor: bool = False,
                     seq: int | None = None, head_hash: str | None = None, reload: bool = True,
                     coverage: Coverage | None = None) -> AuditCheckpoint:
    if reload and getattr(keys, "reload_if_changed", None) is not None:
        keys.reload_if_changed()
    seq = head.seq if seq is None else seq
    head_hash = head.hash if head_hash is None else head_hash
    token = sign_checkpoint(keys, issuer, head.org_id, seq, head_hash, anchor,
                            every=coverage.every if coverage else None, interval=coverage.interval if coverage else None)
    now = utcnow()
    cp = AuditCheckpoint(org_id=head.org_id, seq=seq, hash=head_hash, anchor=anchor,
                         kid=keys.signing_key.kid, token=token, created_at=now)
    session.add(cp)
    if not anchor:
        head.checkpoint_seq, head.checkpoint_at = seq, now
    return cp


def _ts(value: Any) -> datetime | None:
    try:
        return parse_ts(str(value))
    except ValueError:
        return None


async def _open_stretch(session: AsyncSession, head: AuditHead) -> tuple[datetime | None, datetime | None]:
    """Earliest and latest creation time of the events after the last checkpoint (at most
    ``every - 1`` rows, read by the (org_id, seq) index)."""
    if head.seq <= head.checkpoint_seq:
        return None, None
    lo, hi = (await session.execute(
        select(func.min(AuditRow.created_at), func.max(AuditRow.created_at))
        .where(AuditRow.org_id == head.org_id, AuditRow.seq > head.checkpoint_seq)
    )).one()
    # The stored texts are fixed-width UTC, so text order is time order.
    return (_ts(lo), _ts(hi)) if lo is not None and hi is not None else (None, None)


async def append_events(
    session: AsyncSession, org_id: str, events: list[dict[str, Any]], *,
    keys: Any, issuer: str, checkpoint_every: int, checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
) -> int:
    """Append ``events`` (normalized) to the org's chain inside the caller's transaction.
    Events whose ``event_id`` is already stored are skipped (a re-delivered stream entry).
    Signs the checkpoints the coverage rule needs (module doc). Returns how many were appended."""
    coverage = Coverage(checkpoint_every, checkpoint_interval)
    head = await lock_head(session, org_id)
    reloaded = False

    async def checkpoint(seq: int, head_hash: str) -> None:
        nonlocal reloaded
        # Sign with the newest key (bastion keys rotate), reloaded once per append.
        await _sign_into(session, head, keys, issuer, seq=seq, head_hash=head_hash, reload=not reloaded,
                         coverage=coverage)
        reloaded = True

    ids = [e["event_id"] for e in events]
    existing: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        rows = await session.execute(select(AuditRow.event_id).where(AuditRow.event_id.in_(chunk)))
        existing.update(r[0] for r in rows)
    seq, prev = head.seq, head.hash
    lo, hi = await _open_stretch(session, head)
    rows_out = []
    seen: set[str] = set()
    for e in events:
        if e["event_id"] in existing or e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        ts = _ts(e.get("created_at")) or utcnow()
        if seq > head.checkpoint_seq and _too_wide(lo, hi, ts, checkpoint_interval):
            # This event was created too far from the open stretch's (it arrived late, or the
            # others did): close the stretch first, so no stretch spans more than the interval.
            await checkpoint(seq, prev)
            lo = hi = None
        seq += 1
        body = dict(e, seq=seq, org_id=org_id)
        body = {k: body.get(k) for k in FIELDS}
        h = chain_hash(prev, body)
        rows_out.append(dict(body, hash=h))
        prev = h
        lo, hi = (ts, ts) if lo is None or hi is None else (min(lo, ts), max(hi, ts))
        if head.checkpoint_at is None or ts < head.checkpoint_at:
            head.checkpoint_at = ts  # the next checkpoint is due an interval after this event
        if seq - head.checkpoint_seq >= checkpoint_every:  # exactly every N events
            await checkpoint(seq, h)
            lo = hi = None
    if not rows_out:
        return 0
    await session.execute(AUDIT_ROWS.insert(), rows_out)
    head.seq, head.hash, head.updated_at = seq, prev, utcnow()
    if head.seq > head.checkpoint_seq and (
        head.checkpoint_at is None or head.checkpoint_at <= utcnow() - timedelta(seconds=checkpoint_interval)
    ):
        await checkpoint(head.seq, head.hash)  # due already (an event that arrived late): now, not in a tick
    return len(rows_out)


async def checkpoint_if_due(
    sessions: async_sessionmaker[AsyncSession], keys: Any, issuer: str, max_age: float, now: datetime | None = None,
    *, every: int | None = None, interval: float | None = None,
) -> int:
    """Sign a checkpoint for every org with events after its last checkpoint whose
    ``checkpoint_at`` (module doc) is ``max_age`` seconds old or more; ``max_age=0``: every
    such org (a writer that stops). ``every``/``interval``: the coverage to sign into the
    checkpoints (``interval`` defaults to ``max_age``). Returns how many were signed."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=max_age)
    coverage = Coverage(every or DEFAULT_CHECKPOINT_EVERY, max_age if interval is None else interval)
    async with sessions() as session:
        rows = await session.execute(
            select(AuditHead.org_id).where(
                AuditHead.seq > AuditHead.checkpoint_seq,
                (AuditHead.checkpoint_at.is_(None)) | (AuditHead.checkpoint_at <= cutoff),
            )
        )
        due = [r[0] for r in rows]
    done = 0
    for org_id in due:
        async with sessions() as session, session.begin():
            head = await lock_head(session, org_id)
            if head.seq > head.checkpoint_seq and (head.checkpoint_at is None or head.checkpoint_at <= cutoff):
                await _sign_into(session, head, keys, issuer, coverage=coverage)
                done += 1
    return done


async def checkpoint_now(sessions: async_sessionmaker[AsyncSession], org_id: str, keys: Any, issuer: str,
                         coverage: Coverage | None = None) -> int:
    """Sign the org's current head if it has unsigned events (before an export). Returns the
    head's seq: everything up to it is under a checkpoint."""
    async with sessions() as session, session.begin():
        head = await lock_head(session, org_id)
        if head.seq > head.checkpoint_seq:
            await _sign_into(session, head, keys, issuer, coverage=coverage)
        return int(head.seq)


async def prune(
    sessions: async_sessionmaker[AsyncSession], org_id: str, older_than: datetime, keys: Any, issuer: str,
    coverage: Coverage | None = None,
) -> int:
    """Retention: delete the oldest events created before ``older_than`` — a prefix of the chain
    (seq 1..p, stopping at the first newer event) — after signing an anchor checkpoint at p.
    Returns the number of events deleted."""
    cutoff = format_ts(older_than)
    async with sessions() as session, session.begin():
        head = await lock_head(session, org_id)
        first_new = (await session.execute(
            select(func.min(AuditRow.seq)).where(AuditRow.org_id == org_id, AuditRow.created_at >= cutoff)
        )).scalar()
        p = head.seq if first_new is None else int(first_new) - 1
        oldest = (await session.execute(select(func.min(AuditRow.seq)).where(AuditRow.org_id == org_id))).scalar()
        if oldest is None or p < int(oldest):
            return 0
        p_hash = (await session.execute(
            select(AuditRow.hash).where(AuditRow.org_id == org_id, AuditRow.seq == p)
        )).scalar_one()
        await _sign_into(session, head, keys, issuer, anchor=True, seq=p, head_hash=p_hash, coverage=coverage)
        await session.flush()
        result = await session.execute(delete(AuditRow).where(AuditRow.org_id == org_id, AuditRow.seq <= p))
        # Checkpoints before the anchor certify deleted events only.
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.org_id == org_id, AuditCheckpoint.seq < p))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def prune_all(sessions: async_sessionmaker[AsyncSession], retention_days: int, keys: Any, issuer: str,
                    now: datetime | None = None, coverage: Coverage | None = None) -> int:
    if retention_days <= 0:
        return 0
    older_than = (now or utcnow()) - timedelta(days=retention_days)
    async with sessions() as session:
        orgs = [r[0] for r in await session.execute(
            select(AuditRow.org_id).where(AuditRow.created_at < format_ts(older_than)).distinct())]
    total = 0
    for org_id in orgs:
        total += await prune(sessions, org_id, older_than, keys, issuer, coverage)
    return total


@dataclass(frozen=True)
class EventFilter:
    uapk_id: str | None = None
    agent_id: str | None = None
    decision: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _filtered(q: Any, org_id: str, f: EventFilter) -> Any:
    q = q.where(AuditRow.org_id == org_id)
    if f.uapk_id is not None:
        q = q.where(AuditRow.uapk_id == f.uapk_id)
    if f.agent_id is not None:
        q = q.where(AuditRow.agent_id == f.agent_id)
    if f.decision is not None:
        q = q.where(AuditRow.decision == f.decision)
    if f.kind is not None:
        q = q.where(AuditRow.kind == f.kind)
    if f.since is not None:
        q = q.where(AuditRow.created_at >= format_ts(f.since))
    if f.until is not None:
        q = q.where(AuditRow.created_at <= format_ts(f.until))
    return q


async def list_events(session: AsyncSession, org_id: str, f: EventFilter, limit: int, offset: int) -> tuple[list[AuditRow], int]:
    """Newest first (by seq)."""
    total = (await session.execute(_filtered(select(func.count()).select_from(AuditRow), org_id, f))).scalar_one()
    rows = (await session.execute(
        _filtered(select(AuditRow), org_id, f).order_by(AuditRow.seq.desc()).limit(limit).offset(offset)
    )).scalars().all()
    return list(rows), int(total)


async def get_event(session: AsyncSession, org_id: str, event_id: str) -> AuditRow | None:
    return (await session.execute(
        select(AuditRow).where(AuditRow.org_id == org_id, AuditRow.event_id == event_id)
    )).scalar_one_or_none()


async def iter_events(
    sessions: async_sessionmaker[AsyncSession], org_id: str, from_seq: int = 0, to_seq: int | None = None, chunk: int = 1000,
) -> AsyncIterator[AuditRow]:
    """Events in seq order, read in chunks (each in its own short session)."""
    after = from_seq - 1
    while True:
        async with sessions() as session:
            q = select(AuditRow).where(AuditRow.org_id == org_id, AuditRow.seq > after)
            if to_seq is not None:
                q = q.where(AuditRow.seq <= to_seq)
            rows = (await session.execute(q.order_by(AuditRow.seq).limit(chunk))).scalars().all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq
        if len(rows) < chunk:
            return


async def load_checkpoints(session: AsyncSession, org_id: str, max_seq: int | None = None) -> list[AuditCheckpoint]:
    q = select(AuditCheckpoint).where(AuditCheckpoint.org_id == org_id)
    if max_seq is not None:
        q = q.where(AuditCheckpoint.seq <= max_seq)
    return list((await session.execute(q.order_by(AuditCheckpoint.seq, AuditCheckpoint.id))).scalars().all())


async def get_head(session: AsyncSession, org_id: str) -> AuditHead | None:
    return await session.get(AuditHead, org_id, populate_existing=True)


async def verify_org(sessions: async_sessionmaker[AsyncSession], org_id: str, keys: Any, *,
                     every: int | None = None, interval: float | None = None) -> VerifyResult:
    """Recompute the org's chain from the stored events and check every signed checkpoint, the
    coverage rule (module doc; ``every``/``interval``: the writer's configuration, for
    checkpoints that do not state theirs) and the head (a missing tail is detected up to the
    last checkpoint, and up to the head row).

    Reads the head first and then the checkpoints, so every checkpoint signed with the events
    in view is seen (the tail's age is judged as of before the head was read). A checkpoint
    beyond that head is fine only if the head has moved on meanwhile (concurrent appends)."""
    now = utcnow()
    async with sessions() as session:
        head = await get_head(session, org_id)
        cps = await load_checkpoints(session, org_id)
    head_seq = head.seq if head is not None else 0
    reload = getattr(keys, "reload_if_changed", None)
    if reload is not None:
        reload()
    claims, problem = verify_tokens([c.token for c in cps], keys.public_key, org_id)
    if problem is not None:
        return VerifyResult(False, 0, None, problem, None)
    later = [c["seq"] for c in claims if c["seq"] > head_seq]
    verifier = ChainVerifier(org_id, [c for c in claims if c["seq"] <= head_seq],
                             every=every or DEFAULT_CHECKPOINT_EVERY,
                             interval=DEFAULT_CHECKPOINT_INTERVAL if interval is None else interval, now=now)
    async for row in iter_events(sessions, org_id, to_seq=head_seq):
        if not verifier.add(event_body(row), row.hash):
            break
    result = verifier.finish(head_seq)
    if result.valid and later:
        async with sessions() as session:
            moved = await get_head(session, org_id)
        if moved is None or moved.seq < max(later):
            return verifier.fail_end(
                f"truncated: a signed checkpoint covers seq {max(later)} but the log ends at seq {head_seq}")
    return result


def public_event(row: AuditRow) -> dict[str, Any]:
    """What the API returns: the hashed fields plus the chain hash."""
    out = event_body(row)
    out["hash"] = row.hash
    return out
