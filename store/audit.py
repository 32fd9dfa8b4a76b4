"""The audit trail: a hash chain of events per organization, signed checkpoints, verification.

Chain: ``hash_i = SHA-256(bytes(hash_{i-1}) || JCS(body_i))`` where ``body_i`` is the event as
:func:`event_body` gives it (every field below, ``seq`` included; JCS = RFC 8785 canonical JSON),
``bytes(h)`` the 32 raw bytes of a hex digest and ``hash_0`` 32 zero bytes.

Appends are serialized per organization: the append transaction locks the org's row in
``audit_heads`` (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite takes its database write lock
with the first statement, an ``INSERT ... ON CONFLICT DO NOTHING`` of that row), reads the head,
assigns ``seq`` and hashes, inserts the events and moves the head. The chain cannot fork.

Checkpoints: an EdDSA JWT (``typ`` :data:`CHECKPOINT_TYP`) over ``{org_id, seq, hash, anchor}``.
An ``anchor`` checkpoint is written by retention pruning: the events up to ``seq`` were deleted
on purpose and verification starts from its hash.

The pure parts (hashing, :class:`ChainVerifier`, checkpoint verification with a key lookup) need
no database: ``bastion audit verify`` uses them on an export file.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Iterable

import jwt
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.canonical import canonical_json
from core.clock import utcnow
from core.tokens import sign
from store.models import AuditCheckpoint, AuditEvent, AuditHead

ZERO_HASH = "0" * 64
CHECKPOINT_TYP = "bastion-audit-checkpoint+jwt"
CHECKPOINT_AUDIENCE = "bastion-audit"
# Checkpoints are evidence, not credentials: they do not expire (verification ignores exp).
_CHECKPOINT_TTL = 100 * 366 * 86400
EXPORT_FORMAT = "bastion-audit-export/1"

# The hashed event fields, in the order the API shows them.
FIELDS = (
    "event_id", "org_id", "seq", "kind", "actor", "uapk_id", "agent_id", "capability", "decision",
    "reasons", "policy_version", "request_id", "interaction_id", "params_hash", "params", "details",
    "created_at",
)
# Column widths: longer strings are cut before hashing (the stored value is the hashed one).
_WIDTHS = {
    "event_id": 64, "org_id": 36, "kind": 64, "actor": 300, "uapk_id": 63, "agent_id": 200,
    "capability": 200, "decision": 16, "policy_version": 80, "request_id": 128,
    "interaction_id": 64, "params_hash": 80, "created_at": 32,
}
_MAX_SAFE_INT = 2**53 - 1


# --- pure helpers ----------------------------------------------------------------------
def format_ts(dt: datetime) -> str:
    """Fixed-width RFC 3339 (microseconds, Z): the stored and hashed ``created_at``; sorts as text."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """RFC 3339 with an offset (or Z); raises ValueError otherwise."""
    dt = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("a time zone offset (or Z) is required")
    return dt.astimezone(timezone.utc)


def jcs_safe(value: Any) -> Any:
    """A JSON value RFC 8785 accepts: integers beyond 2**53 and non-finite floats become strings,
    tuples lists, other objects their ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jcs_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jcs_safe(v) for v in value]
    return str(value)


def params_digest(params: Any) -> str:
    """``sha256:<hex>`` of the JCS of the action params (``{}`` when absent)."""
    return "sha256:" + hashlib.sha256(canonical_json(jcs_safe(params if params is not None else {}))).hexdigest()


def normalize(event: dict[str, Any]) -> dict[str, Any]:
    """The stored form of an incoming event: known fields only, strings cut to their columns,
    JSON values made canonicalisable. ``seq`` is assigned by the writer."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name == "seq":
            continue
        value = event.get(name)
        if name in _WIDTHS:
            value = None if value is None else str(value)[: _WIDTHS[name]]
        elif name == "reasons":
            value = jcs_safe(list(value)) if isinstance(value, (list, tuple)) else None
        elif name == "details":
            value = jcs_safe(dict(value)) if isinstance(value, dict) else None
        else:
            value = jcs_safe(value)
        out[name] = value
    if not out.get("kind"):
        out["kind"] = "unknown"
    return out


def event_body(source: Any) -> dict[str, Any]:
    """The hashed dict of a stored event (a row or a mapping): every field of :data:`FIELDS`."""
    get = source.get if isinstance(source, dict) else lambda n: getattr(source, n)
    return {name: get(name) for name in FIELDS}


def chain_hash(prev_hex: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hex) + canonical_json(body)).hexdigest()


def sign_checkpoint(keys: Any, issuer: str, org_id: str, seq: int, head_hash: str, anchor: bool = False) -> str:
    claims = {
        "iss": issuer, "aud": CHECKPOINT_AUDIENCE, "sub": org_id,
        "org_id": org_id, "seq": int(seq), "hash": head_hash, "anchor": bool(anchor),
    }
    return sign(keys, CHECKPOINT_TYP, claims, _CHECKPOINT_TTL)


class CheckpointInvalid(Exception):
    pass


def verify_checkpoint(token: str, public_key: Callable[[str], Any], org_id: str) -> dict[str, Any]:
    """The checkpoint's claims, or ``CheckpointInvalid``. Pins EdDSA and the typ; the key is
    found by ``kid`` only; ``exp`` is not checked (a checkpoint is a record, not a credential)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise CheckpointInvalid("malformed") from None
    if header.get("alg") != "EdDSA" or header.get("typ") != CHECKPOINT_TYP:
        raise CheckpointInvalid("wrong algorithm or type")
    kid = header.get("kid")
    key = public_key(kid) if isinstance(kid, str) and len(kid) <= 64 else None
    if key is None:
        raise CheckpointInvalid(f"unknown signing key {kid!r}")
    try:
        claims = jwt.decode(
            token, key, algorithms=["EdDSA"], audience=CHECKPOINT_AUDIENCE,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["seq", "hash", "org_id"]},
        )
    except jwt.PyJWTError as exc:
        raise CheckpointInvalid(f"signature or claims rejected ({type(exc).__name__})") from None
    if claims.get("org_id") != org_id:
        raise CheckpointInvalid("signed for another organization")
    if not isinstance(claims.get("seq"), int) or not isinstance(claims.get("hash"), str):
        raise CheckpointInvalid("bad claims")
    claims["kid"] = kid
    return claims


def checkpoint_summary(claims: dict[str, Any] | None) -> dict[str, Any] | None:
    if claims is None:
        return None
    iat = claims.get("iat")
    return {
        "seq": claims["seq"],
        "hash": claims["hash"],
        "anchor": bool(claims.get("anchor")),
        "kid": claims.get("kid"),
        "signed_at": format_ts(datetime.fromtimestamp(iat, timezone.utc)) if isinstance(iat, int) else None,
    }


@dataclass
class VerifyResult:
    valid: bool
    checked: int
    first_invalid_event_id: str | None = None
    problem: str | None = None
    last_checkpoint: dict[str, Any] | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    start: str = "genesis"  # genesis | anchor | checkpoint

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"valid": self.valid, "checked": self.checked}
        if self.first_invalid_event_id is not None:
            out["first_invalid_event_id"] = self.first_invalid_event_id
        if self.problem is not None:
            out["problem"] = self.problem
        out["last_checkpoint"] = self.last_checkpoint
        out["first_seq"], out["last_seq"], out["start"] = self.first_seq, self.last_seq, self.start
        return out


@dataclass
class ChainVerifier:
    """Feed events in file/seq order with :meth:`add`, then :meth:`finish`.

    ``checkpoints``: verified claims. ``allow_checkpoint_start``: the events may begin right
    after any signed checkpoint (an export with ``from``); otherwise only at seq 1 or right after
    an ``anchor`` checkpoint (retention), so deleting the oldest events is detected."""

    org_id: str
    checkpoints: list[dict[str, Any]]
    allow_checkpoint_start: bool = False
    checked: int = 0
    failed: VerifyResult | None = None
    _prev: str | None = None
    _seq: int = 0
    _first_seq: int | None = None
    _start: str = "genesis"
    _segment_first: str | None = None  # first event after the last matched checkpoint
    _matched: dict[str, Any] | None = None
    _by_seq: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cp in self.checkpoints:
            self._by_seq.setdefault(cp["seq"], []).append(cp)

    def _fail(self, problem: str, event_id: str | None) -> bool:
        self.failed = VerifyResult(
            False, self.checked, event_id, problem, checkpoint_summary(self._matched),
            self._first_seq, self._seq or None, self._start,
        )
        return False

    def _begin(self, seq: int, event_id: str) -> bool:
        self._first_seq = seq
        if seq == 1:
            self._prev, self._seq, self._start = ZERO_HASH, 0, "genesis"
            return True
        cps = self._by_seq.get(seq - 1, [])
        anchors = [c for c in cps if c.get("anchor")]
        usable = anchors or (cps if self.allow_checkpoint_start else [])
        if not usable:
            return self._fail(
                f"the log starts at seq {seq} but no signed retention anchor covers seq {seq - 1}: "
                "the oldest events were deleted", event_id)
        hashes = {c["hash"] for c in usable}
        if len(hashes) != 1:
            return self._fail(f"conflicting signed checkpoints at seq {seq - 1}", event_id)
        self._prev, self._seq = hashes.pop(), seq - 1
        self._start = "anchor" if anchors else "checkpoint"
        self._matched = usable[0]
        return True

    def add(self, body: dict[str, Any], stored_hash: str | None) -> bool:
        if self.failed is not None:
            return False
        seq, event_id = body.get("seq"), body.get("event_id")
        if not isinstance(seq, int):
            return self._fail("an event has no integer seq", event_id)
        if self._prev is None and not self._begin(seq, event_id):
            return False
        if body.get("org_id") != self.org_id:
            return self._fail(f"event at seq {seq} belongs to another organization", event_id)
        if seq != self._seq + 1:
            what = "missing (deleted)" if seq > self._seq + 1 else "out of order or duplicated (reordered or inserted)"
            return self._fail(f"expected seq {self._seq + 1}, found {seq}: events {what}", event_id)
        if self._segment_first is None:
            self._segment_first = event_id
        try:
            computed = chain_hash(self._prev or ZERO_HASH, body)
        except Exception as exc:
            return self._fail(f"event at seq {seq} cannot be canonicalised ({type(exc).__name__})", event_id)
        if stored_hash is not None and stored_hash != computed:
            return self._fail(f"event at seq {seq} does not match its recorded hash: it was modified", event_id)
        self.checked += 1
        self._seq, self._prev = seq, computed
        for cp in self._by_seq.get(seq, []):
            if cp["hash"] != computed:
                return self._fail(
                    f"the signed checkpoint at seq {seq} does not match the chain: an event between "
                    f"seq {seq - self._segment_count(seq) + 1} and {seq} was altered, inserted or removed",
                    self._segment_first)
            self._matched = cp
        if self._by_seq.get(seq):
            self._segment_first = None
        return True

    def _segment_count(self, seq: int) -> int:
        lower = max([s for s in self._by_seq if s < seq] + [(self._first_seq or 1) - 1])
        return seq - lower

    def finish(self, head_seq: int | None = None) -> VerifyResult:
        if self.failed is not None:
            return self.failed
        last = self._seq if self._prev is not None else None
        # No events at all: an anchor (everything pruned) or nothing ever written.
        if last is None:
            anchors = [c for c in self.checkpoints if c.get("anchor")]
            base = max((c["seq"] for c in anchors), default=0)
            if anchors:
                self._matched = max(anchors, key=lambda c: c["seq"])
                self._start = "anchor"
            last = base
        beyond = [c["seq"] for c in self.checkpoints if c["seq"] > last]
        if beyond:
            return self._fail_end(f"truncated: a signed checkpoint covers seq {max(beyond)} but the log ends at seq {last}")
        if head_seq is not None and head_seq != last:
            return self._fail_end(f"truncated: the chain head is at seq {head_seq} but the log ends at seq {last}")
        return VerifyResult(True, self.checked, None, None, checkpoint_summary(self._matched),
                            self._first_seq, last or None, self._start)

    def _fail_end(self, problem: str) -> VerifyResult:
        self._fail(problem, None)
        assert self.failed is not None
        return self.failed


def verify_tokens(tokens: Iterable[str], public_key: Callable[[str], Any], org_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """Verified claims of every checkpoint token, or a problem line for the first bad one."""
    out = []
    for token in tokens:
        try:
            out.append(verify_checkpoint(token, public_key, org_id))
        except CheckpointInvalid as exc:
            return out, f"a checkpoint is not validly signed: {exc}"
    return out, None


# --- repository ------------------------------------------------------------------------
def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name  # type: ignore[union-attr]


async def lock_head(session: AsyncSession, org_id: str) -> AuditHead:
    """Create the org's head row if missing and lock it for the rest of the transaction."""
    now = utcnow()
    # checkpoint_at starts at the chain's creation: the first time-based checkpoint is due a
    # checkpoint interval after the first event.
    values = {"org_id": org_id, "seq": 0, "hash": ZERO_HASH, "checkpoint_seq": 0, "checkpoint_at": now, "updated_at": now}
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
                     seq: int | None = None, head_hash: str | None = None, reload: bool = True) -> AuditCheckpoint:
    if reload and getattr(keys, "reload_if_changed", None) is not None:
        keys.reload_if_changed()
    seq = head.seq if seq is None else seq
    head_hash = head.hash if head_hash is None else head_hash
    token = sign_checkpoint(keys, issuer, head.org_id, seq, head_hash, anchor)
    now = utcnow()
    cp = AuditCheckpoint(org_id=head.org_id, seq=seq, hash=head_hash, anchor=anchor,
                         kid=keys.signing_key.kid, token=token, created_at=now)
    session.add(cp)
    if not anchor:
        head.checkpoint_seq, head.checkpoint_at = seq, now
    return cp


async def append_events(
    session: AsyncSession, org_id: str, events: list[dict[str, Any]], *,
    keys: Any, issuer: str, checkpoint_every: int,
) -> int:
    """Append ``events`` (normalized) to the org's chain inside the caller's transaction.
    Events whose ``event_id`` is already stored are skipped (a re-delivered stream entry).
    Returns how many were appended."""
    head = await lock_head(session, org_id)
    if head.seq // checkpoint_every != (head.seq + len(events)) // checkpoint_every:
        reload = getattr(keys, "reload_if_changed", None)
        if reload is not None:
            reload()  # a checkpoint is coming: sign with the newest key (bastion keys rotate)
    ids = [e["event_id"] for e in events]
    existing: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        rows = await session.execute(select(AuditEvent.event_id).where(AuditEvent.event_id.in_(chunk)))
        existing.update(r[0] for r in rows)
    seq, prev = head.seq, head.hash
    rows_out = []
    seen: set[str] = set()
    for e in events:
        if e["event_id"] in existing or e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        seq += 1
        body = dict(e, seq=seq, org_id=org_id)
        body = {k: body.get(k) for k in FIELDS}
        h = chain_hash(prev, body)
        rows_out.append(dict(body, hash=h))
        prev = h
        if seq - head.checkpoint_seq >= checkpoint_every:  # exactly every N events
            await _sign_into(session, head, keys, issuer, seq=seq, head_hash=h, reload=False)
    if not rows_out:
        return 0
    await session.execute(AuditEvent.__table__.insert(), rows_out)
    head.seq, head.hash, head.updated_at = seq, prev, utcnow()
    return len(rows_out)


async def checkpoint_if_due(
    sessions: async_sessionmaker[AsyncSession], keys: Any, issuer: str, max_age: float, now: datetime | None = None,
) -> int:
    """Sign a checkpoint for every org with unsigned events whose last checkpoint is older than
    ``max_age`` seconds (or that never had one). Returns how many were signed."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=max_age)
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
                await _sign_into(session, head, keys, issuer)
                done += 1
    return done


async def checkpoint_now(sessions: async_sessionmaker[AsyncSession], org_id: str, keys: Any, issuer: str) -> None:
    """Sign the org's current head if it has unsigned events (before an export)."""
    async with sessions() as session, session.begin():
        head = await lock_head(session, org_id)
        if head.seq > head.checkpoint_seq:
            await _sign_into(session, head, keys, issuer)


async def prune(
    sessions: async_sessionmaker[AsyncSession], org_id: str, older_than: datetime, keys: Any, issuer: str,
) -> int:
    """Retention: delete the oldest events created before ``older_than`` — a prefix of the chain
    (seq 1..p, stopping at the first newer event) — after signing an anchor checkpoint at p.
    Returns the number of events deleted."""
    cutoff = format_ts(older_than)
    async with sessions() as session, session.begin():
        head = await lock_head(session, org_id)
        first_new = (await session.execute(
            select(func.min(AuditEvent.seq)).where(AuditEvent.org_id == org_id, AuditEvent.created_at >= cutoff)
        )).scalar()
        p = head.seq if first_new is None else int(first_new) - 1
        oldest = (await session.execute(select(func.min(AuditEvent.seq)).where(AuditEvent.org_id == org_id))).scalar()
        if oldest is None or p < int(oldest):
            return 0
        p_hash = (await session.execute(
            select(AuditEvent.hash).where(AuditEvent.org_id == org_id, AuditEvent.seq == p)
        )).scalar_one()
        await _sign_into(session, head, keys, issuer, anchor=True, seq=p, head_hash=p_hash)
        await session.flush()
        result = await session.execute(delete(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.seq <= p))
        # Checkpoints before the anchor certify deleted events only.
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.org_id == org_id, AuditCheckpoint.seq < p))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def prune_all(sessions: async_sessionmaker[AsyncSession], retention_days: int, keys: Any, issuer: str,
                    now: datetime | None = None) -> int:
    if retention_days <= 0:
        return 0
    older_than = (now or utcnow()) - timedelta(days=retention_days)
    async with sessions() as session:
        orgs = [r[0] for r in await session.execute(
            select(AuditEvent.org_id).where(AuditEvent.created_at < format_ts(older_than)).distinct())]
    total = 0
    for org_id in orgs:
        total += await prune(sessions, org_id, older_than, keys, issuer)
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
    q = q.where(AuditEvent.org_id == org_id)
    if f.uapk_id is not None:
        q = q.where(AuditEvent.uapk_id == f.uapk_id)
    if f.agent_id is not None:
        q = q.where(AuditEvent.agent_id == f.agent_id)
    if f.decision is not None:
        q = q.where(AuditEvent.decision == f.decision)
    if f.kind is not None:
        q = q.where(AuditEvent.kind == f.kind)
    if f.since is not None:
        q = q.where(AuditEvent.created_at >= format_ts(f.since))
    if f.until is not None:
        q = q.where(AuditEvent.created_at <= format_ts(f.until))
    return q


async def list_events(session: AsyncSession, org_id: str, f: EventFilter, limit: int, offset: int) -> tuple[list[AuditEvent], int]:
    """Newest first (by seq)."""
    total = (await session.execute(_filtered(select(func.count()).select_from(AuditEvent), org_id, f))).scalar_one()
    rows = (await session.execute(
        _filtered(select(AuditEvent), org_id, f).order_by(AuditEvent.seq.desc()).limit(limit).offset(offset)
    )).scalars().all()
    return list(rows), int(total)


async def get_event(session: AsyncSession, org_id: str, event_id: str) -> AuditEvent | None:
    return (await session.execute(
        select(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.event_id == event_id)
    )).scalar_one_or_none()


async def iter_events(
    sessions: async_sessionmaker[AsyncSession], org_id: str, from_seq: int = 0, to_seq: int | None = None, chunk: int = 1000,
) -> AsyncIterator[AuditEvent]:
    """Events in seq order, read in chunks (each in its own short session)."""
    after = from_seq - 1
    while True:
        async with sessions() as session:
            q = select(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.seq > after)
            if to_seq is not None:
                q = q.where(AuditEvent.seq <= to_seq)
            rows = (await session.execute(q.order_by(AuditEvent.seq).limit(chunk))).scalars().all()
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


async def verify_org(sessions: async_sessionmaker[AsyncSession], org_id: str, keys: Any) -> VerifyResult:
    """Recompute the org's chain from the stored events and check every signed checkpoint and
    the head (a missing tail is detected up to the last checkpoint, and up to the head row)."""
    async with sessions() as session:
        cps = await load_checkpoints(session, org_id)
        head = await get_head(session, org_id)
    reload = getattr(keys, "reload_if_changed", None)
    if reload is not None:
        reload()
    claims, problem = verify_tokens([c.token for c in cps], keys.public_key, org_id)
    if problem is not None:
        return VerifyResult(False, 0, None, problem, None)
    verifier = ChainVerifier(org_id, claims)
    async for row in iter_events(sessions, org_id):
        if not verifier.add(event_body(row), row.hash):
            break
    return verifier.finish(head.seq if head is not None else 0)


def public_event(row: AuditEvent) -> dict[str, Any]:
    """What the API returns: the hashed fields plus the chain hash."""
    out = event_body(row)
    out["hash"] = row.hash
    return out


def export_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def verify_export(lines: Iterable[str | bytes], public_key: Callable[[str], Any]) -> VerifyResult:
    """Verify an export (``GET .../audit/export``) offline: the chain, every signed checkpoint
    (``public_key(kid)`` from the JWKS), and that nothing was cut from the end."""
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    tokens: list[str] = []
    events: list[tuple[dict[str, Any], str | None]] = []
    for n, raw in enumerate(lines, 1):
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            return VerifyResult(False, 0, None, f"line {n} is not JSON")
        kind = obj.get("type") if isinstance(obj, dict) else None
        if end is not None:
            return VerifyResult(False, 0, None, f"line {n}: data after the end line")
        if kind == "header":
            if header is not None or n != 1:
                return VerifyResult(False, 0, None, f"line {n}: a second header")
            header = obj
        elif header is None:
            return VerifyResult(False, 0, None, "the export does not start with a header line")
        elif kind == "checkpoint" and isinstance(obj.get("token"), str):
            tokens.append(obj["token"])
        elif kind == "event" and isinstance(obj.get("event"), dict):
            body = {k: obj["event"].get(k) for k in FIELDS}
            events.append((body, obj.get("hash")))
        elif kind == "end":
            end = obj
        else:
            return VerifyResult(False, 0, None, f"line {n}: unknown line type {kind!r}")
    if header is None:
        return VerifyResult(False, 0, None, "empty export")
    if header.get("format") != EXPORT_FORMAT:
        return VerifyResult(False, 0, None, f"unknown export format {header.get('format')!r}")
    org_id = header.get("org_id")
    if not isinstance(org_id, str):
        return VerifyResult(False, 0, None, "the header names no org_id")
    claims, problem = verify_tokens(tokens, public_key, org_id)
    if problem is not None:
        return VerifyResult(False, 0, None, problem)
    last_line_seq = end.get("last_seq") if end else None
    # A bounded export (``to``) carries only the checkpoints up to its last event.
    verifier = ChainVerifier(org_id, claims, allow_checkpoint_start=header.get("from") is not None)
    for body, stored in events:
        if not verifier.add(body, stored):
            break
    if end is None and verifier.failed is None:
        verifier._fail("truncated: the export has no end line", None)
    result = verifier.finish(last_line_seq if isinstance(last_line_seq, int) else None)
    return result
