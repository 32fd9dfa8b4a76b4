"""The audit trail: a hash chain of events per organization, signed checkpoints, verification.

Chain: ``hash_i = SHA-256(bytes(hash_{i-1}) || JCS(body_i))`` where ``body_i`` is the event as
:func:`event_body` gives it (every field below, ``seq`` included; JCS = RFC 8785 canonical JSON),
``bytes(h)`` the 32 raw bytes of a hex digest and ``hash_0`` 32 zero bytes.

Appends are serialized per organization: the append transaction locks the org's row in
``audit_heads`` (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite takes its database write lock
with the first statement, an ``INSERT ... ON CONFLICT DO NOTHING`` of that row), reads the head,
assigns ``seq`` and hashes, inserts the events and moves the head. The chain cannot fork.

Checkpoints: an EdDSA JWT (``typ`` :data:`CHECKPOINT_TYP`) over ``{org_id, seq, hash, anchor}``
plus the signer's ``every`` and ``interval`` (the coverage rule below). An ``anchor`` checkpoint
is written by retention pruning: the events up to ``seq`` were deleted on purpose and
verification starts from its hash.

Coverage: a checkpoint only proves what it covers, so a database writer who rewrites events
and deletes the checkpoints from there on would otherwise leave a "valid" chain. The writer
therefore guarantees, and verification demands, that

* no stretch between two checkpoints (or after the last one) holds more than ``every`` events,
* the events of one stretch were created within ``interval`` seconds of each other, and
* no event stays without a checkpoint longer than ``interval`` seconds after its creation
  (verification allows :func:`tail_allowance` before it calls an unsigned event suspicious).

The appends enforce the first two (a checkpoint is signed before an event that would break
them); the third is kept by ``audit_heads.checkpoint_at``, the time from which the next
checkpoint is due: the last checkpoint's time, moved back to the creation time of any older
event appended since. An append signs at once when that is ``interval`` old (an event that
arrives late), the writer's periodic :func:`checkpoint_if_due` does in between, and a writer
that stops signs every open stretch (:func:`checkpoint_if_due` with ``max_age=0``).

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
from sqlalchemy import delete, func, select
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
# The writer's defaults (BASTION_AUDIT_CHECKPOINT_EVERY; the sink's checkpoint_age): used by
# verification where a checkpoint does not say (checkpoints signed before the claims existed).
DEFAULT_CHECKPOINT_EVERY = 100
DEFAULT_CHECKPOINT_INTERVAL = 60.0
# An unsigned event may be this much older than the interval before verification objects: the
# writer checks once a tick (1 s) and may be busy with a batch or a database hiccup.
_MIN_TAIL_GRACE = 30.0

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
    try:
        # The fixed-width form (what every producer of ours sends): stored text sorts as time,
        # which the writer's checkpoint coverage relies on.
        out["created_at"] = format_ts(parse_ts(str(out.get("created_at"))))
    except ValueError:
        # Coverage is judged on creation times: an event without a readable one is stamped
        # with the time it reaches the writer.
        out["created_at"] = format_ts(utcnow())
    return out


def change_event(org_id: str, kind: str, actor: str, details: dict[str, Any]) -> dict[str, Any]:
    """A normalized management-change event, for changes that append to the chain themselves
    (no server, so no audit writer: ``bastion bootstrap``)."""
    import uuid

    return normalize({"event_id": str(uuid.uuid4()), "org_id": org_id, "kind": kind, "actor": actor,
                      "details": details, "created_at": format_ts(utcnow())})


def event_body(source: Any) -> dict[str, Any]:
    """The hashed dict of a stored event (a row or a mapping): every field of :data:`FIELDS`."""
    get = source.get if isinstance(source, dict) else lambda n: getattr(source, n)
    return {name: get(name) for name in FIELDS}


def chain_hash(prev_hex: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hex) + canonical_json(body)).hexdigest()


def sign_checkpoint(keys: Any, issuer: str, org_id: str, seq: int, head_hash: str, anchor: bool = False,
                    every: int | None = None, interval: float | None = None) -> str:
    """``every``/``interval``: the coverage the signer keeps (module doc), signed so that an
    export's reader need not trust the file for them."""
    claims: dict[str, Any] = {
        "iss": issuer, "aud": CHECKPOINT_AUDIENCE, "sub": org_id,
        "org_id": org_id, "seq": int(seq), "hash": head_hash, "anchor": bool(anchor),
    }
    if every is not None:
        claims["every"] = int(every)
    if interval is not None:
        claims["interval"] = float(interval)
    return sign(keys, CHECKPOINT_TYP, claims, _CHECKPOINT_TTL)


def tail_allowance(interval: float) -> float:
    """Seconds an event may stay without a checkpoint before verification objects."""
    return interval + max(interval, _MIN_TAIL_GRACE)


def _claim_every(claims: dict[str, Any]) -> int | None:
    v = claims.get("every")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None


def _claim_interval(claims: dict[str, Any]) -> float | None:
    v = claims.get("interval")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else None


def _too_wide(lo: datetime | None, hi: datetime | None, ts: datetime, interval: float) -> bool:
    """Would a stretch spanning [lo, hi] span more than ``interval`` seconds with ``ts`` added?"""
    if lo is None or hi is None:
        return False
    return (max(hi, ts) - min(lo, ts)).total_seconds() > interval


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
    an ``anchor`` checkpoint (retention), so deleting the oldest events is detected.

    Coverage (module doc): ``every`` and ``interval`` are what the writer is configured with,
    used where a checkpoint's own claims do not say; ``now``, when given, is the moment the
    chain was read: events after the last checkpoint must be younger than
    :func:`tail_allowance` then (None: the tail's age is not judged, e.g. a bounded export).
    ``sealed``: the chain must end on a checkpoint (a complete export: the server signs its
    head before exporting)."""

    org_id: str
    checkpoints: list[dict[str, Any]]
    allow_checkpoint_start: bool = False
    every: int = DEFAULT_CHECKPOINT_EVERY
    interval: float = DEFAULT_CHECKPOINT_INTERVAL
    now: datetime | None = None
    sealed: bool = False
    checked: int = 0
    failed: VerifyResult | None = None
    _prev: str | None = None
    _seq: int = 0
    _first_seq: int | None = None
    _start: str = "genesis"
    _segment_first: str | None = None  # first event after the last matched checkpoint
    _matched: dict[str, Any] | None = None
    _by_seq: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # The open stretch: the checkpoint(s) it follows (none at genesis), its creation times.
    _base_seq: int = 0
    _base_claims: list[dict[str, Any]] = field(default_factory=list)
    _lo: datetime | None = None
    _hi: datetime | None = None

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
        self._base_seq, self._base_claims = seq - 1, list(cps)
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
        try:
            ts = parse_ts(str(body.get("created_at")))
        except ValueError:
            return self._fail(f"event at seq {seq} has no valid created_at", event_id)
        self.checked += 1
        self._seq, self._prev = seq, computed
        self._lo = ts if self._lo is None else min(self._lo, ts)
        self._hi = ts if self._hi is None else max(self._hi, ts)
        cps = self._by_seq.get(seq, [])
        for cp in cps:
            if cp["hash"] != computed:
                return self._fail(
                    f"the signed checkpoint at seq {seq} does not match the chain: an event between "
                    f"seq {seq - self._segment_count(seq) + 1} and {seq} was altered, inserted or removed",
                    self._segment_first)
            self._matched = cp
        if cps:
            problem = self._stretch_problem(seq, cps)
            if problem is not None:
                return self._fail(problem, self._segment_first)
            self._segment_first = None
            self._base_seq, self._base_claims, self._lo, self._hi = seq, list(cps), None, None
        return True

    def _stretch_problem(self, end: int, closing: list[dict[str, Any]] | None) -> str | None:
        """What is wrong with the events ``_base_seq+1 .. end`` and their checkpoints, if anything.
        ``closing``: the checkpoints at ``end`` (None: the open tail after the last one)."""
        count = end - self._base_seq
        if count <= 0:
            return None
        claims = self._base_claims + (closing or [])
        # Each checkpoint states the coverage its signer kept; a stretch may follow either end's
        # (the setting can change between them). Checkpoints that do not say count as configured.
        every = max([_claim_every(c) or self.every for c in claims] + ([self.every] if closing is None else []))
        where = (f"between the signed checkpoints at seq {self._base_seq} and {end}" if closing is not None and self._base_claims
                 else f"up to the signed checkpoint at seq {end}" if closing is not None
                 else f"after the last signed checkpoint (seq {self._base_seq})" if self._base_claims
                 else "with no signed checkpoint")
        if closing is None and self.sealed:
            return (f"the export is complete but its last {count} events (seq {self._base_seq + 1} to {end}) have no "
                    "signed checkpoint (the server signs the head before every export): checkpoints were removed")
        if count > every:
            return (f"{count} events (seq {self._base_seq + 1} to {end}) {where}, but one is signed at least "
                    f"every {every} events: checkpoints were deleted or events inserted")
        intervals = [i for i in (_claim_interval(c) for c in claims) if i is not None]
        if closing is None:
            intervals.append(self.interval)
        if intervals and self._lo is not None and self._hi is not None:
            interval = max(intervals)
            if (self._hi - self._lo).total_seconds() > interval:
                return (f"the events from seq {self._base_seq + 1} to {end} ({where}) were created over "
                        f"{(self._hi - self._lo).total_seconds():.0f} s, but a checkpoint is signed at least every "
                        f"{interval:g} s of activity: checkpoints were deleted or events inserted")
        if closing is None and self.now is not None and self._lo is not None:
            allowance = tail_allowance(max(intervals))
            if (self.now - self._lo).total_seconds() > allowance:
                return (f"the events from seq {self._base_seq + 1} to {end} ({where}) have no signed checkpoint, "
                        f"but the oldest was created at {format_ts(self._lo)}, more than {allowance:g} s earlier and "
                        f"a checkpoint is signed within {max(intervals):g} s: checkpoints were deleted")
        return None

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
        if self._prev is not None:
            problem = self._stretch_problem(last, None)
            if problem is not None:
                self._fail(problem, self._segment_first)
                assert self.failed is not None
                return self.failed
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


@dataclass
class Coverage:
    """The writer's checkpoint rule (module doc): at least every ``every`` events and within
    ``interval`` seconds of an event's creation. Signed into every checkpoint."""

    every: int = DEFAULT_CHECKPOINT_EVERY
    interval: float = DEFAULT_CHECKPOINT_INTERVAL


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
        select(func.min(AuditEvent.created_at), func.max(AuditEvent.created_at))
        .where(AuditEvent.org_id == head.org_id, AuditEvent.seq > head.checkpoint_seq)
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
        rows = await session.execute(select(AuditEvent.event_id).where(AuditEvent.event_id.in_(chunk)))
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
    await session.execute(AuditEvent.__table__.insert(), rows_out)
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
            select(func.min(AuditEvent.seq)).where(AuditEvent.org_id == org_id, AuditEvent.created_at >= cutoff)
        )).scalar()
        p = head.seq if first_new is None else int(first_new) - 1
        oldest = (await session.execute(select(func.min(AuditEvent.seq)).where(AuditEvent.org_id == org_id))).scalar()
        if oldest is None or p < int(oldest):
            return 0
        p_hash = (await session.execute(
            select(AuditEvent.hash).where(AuditEvent.org_id == org_id, AuditEvent.seq == p)
        )).scalar_one()
        await _sign_into(session, head, keys, issuer, anchor=True, seq=p, head_hash=p_hash, coverage=coverage)
        await session.flush()
        result = await session.execute(delete(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.seq <= p))
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
            select(AuditEvent.org_id).where(AuditEvent.created_at < format_ts(older_than)).distinct())]
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
            return verifier._fail_end(
                f"truncated: a signed checkpoint covers seq {max(later)} but the log ends at seq {head_seq}")
    return result


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
    # A bounded export (``to``) carries only the checkpoints up to its last event, so its last
    # events may have none; a complete one ends at the checkpoint the server signed for it.
    every, interval = header.get("checkpoint_every"), header.get("checkpoint_interval")
    verifier = ChainVerifier(
        org_id, claims, allow_checkpoint_start=header.get("from") is not None,
        every=every if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else DEFAULT_CHECKPOINT_EVERY,
        interval=_claim_interval({"interval": interval}) or DEFAULT_CHECKPOINT_INTERVAL,
        sealed=header.get("to") is None,
    )
    for body, stored in events:
        if not verifier.add(body, stored):
            break
    if end is None and verifier.failed is None:
        verifier._fail("truncated: the export has no end line", None)
    result = verifier.finish(last_line_seq if isinstance(last_line_seq, int) else None)
    return result
