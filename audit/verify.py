"""Chain verification: recompute the hashes, match the signed checkpoints, check coverage.

Pure: the same :class:`ChainVerifier` checks the stored chain (store/audit.py ``verify_org``)
and an export file offline (audit/export.py, ``bastion audit verify``).

Coverage (docs/audit.md, "Checkpoints"): no stretch between two checkpoints (or after the last
one) holds more than ``every`` events, the events of one stretch were created within
``interval`` seconds of each other, and no event stays without a checkpoint longer than
:func:`audit.checkpoint.tail_allowance` after its creation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audit.chain import ZERO_HASH, chain_hash
from audit.checkpoint import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHECKPOINT_INTERVAL,
    checkpoint_summary,
    claim_every,
    claim_interval,
    tail_allowance,
)
from audit.event import format_ts, parse_ts


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

    def fail(self, problem: str, event_id: str | None) -> bool:
        self.failed = VerifyResult(
            False, self.checked, event_id, problem, checkpoint_summary(self._matched),
            self._first_seq, self._seq or None, self._start,
        )
        return False

    def _begin(self, seq: int, event_id: str | None) -> bool:
        self._first_seq = seq
        if seq == 1:
            self._prev, self._seq, self._start = ZERO_HASH, 0, "genesis"
            return True
        cps = self._by_seq.get(seq - 1, [])
        anchors = [c for c in cps if c.get("anchor")]
        usable = anchors or (cps if self.allow_checkpoint_start else [])
        if not usable:
            return self.fail(
                f"the log starts at seq {seq} but no signed retention anchor covers seq {seq - 1}: "
                "the oldest events were deleted", event_id)
        hashes = {c["hash"] for c in usable}
        if len(hashes) != 1:
            return self.fail(f"conflicting signed checkpoints at seq {seq - 1}", event_id)
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
            return self.fail("an event has no integer seq", event_id)
        if self._prev is None and not self._begin(seq, event_id):
            return False
        if body.get("org_id") != self.org_id:
            return self.fail(f"event at seq {seq} belongs to another organization", event_id)
        if seq != self._seq + 1:
            what = "missing (deleted)" if seq > self._seq + 1 else "out of order or duplicated (reordered or inserted)"
            return self.fail(f"expected seq {self._seq + 1}, found {seq}: events {what}", event_id)
        if self._segment_first is None:
            self._segment_first = event_id
        try:
            computed = chain_hash(self._prev or ZERO_HASH, body)
        except Exception as exc:
            return self.fail(f"event at seq {seq} cannot be canonicalised ({type(exc).__name__})", event_id)
        if stored_hash is not None and stored_hash != computed:
            return self.fail(f"event at seq {seq} does not match its recorded hash: it was modified", event_id)
        try:
            ts = parse_ts(str(body.get("created_at")))
        except ValueError:
            return self.fail(f"event at seq {seq} has no valid created_at", event_id)
        self.checked += 1
        self._seq, self._prev = seq, computed
        self._lo = ts if self._lo is None else min(self._lo, ts)
        self._hi = ts if self._hi is None else max(self._hi, ts)
        cps = self._by_seq.get(seq, [])
        for cp in cps:
            if cp["hash"] != computed:
                return self.fail(
                    f"the signed checkpoint at seq {seq} does not match the chain: an event between "
                    f"seq {seq - self._segment_count(seq) + 1} and {seq} was altered, inserted or removed",
                    self._segment_first)
            self._matched = cp
        if cps:
            problem = self._stretch_problem(seq, cps)
            if problem is not None:
                return self.fail(problem, self._segment_first)
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
        every = max([claim_every(c) or self.every for c in claims] + ([self.every] if closing is None else []))
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
        intervals = [i for i in (claim_interval(c) for c in claims) if i is not None]
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
            return self.fail_end(f"truncated: a signed checkpoint covers seq {max(beyond)} but the log ends at seq {last}")
        if head_seq is not None and head_seq != last:
            return self.fail_end(f"truncated: the chain head is at seq {head_seq} but the log ends at seq {last}")
        if self._prev is not None:
            problem = self._stretch_problem(last, None)
            if problem is not None:
                return self.fail_end(problem, self._segment_first)
        return VerifyResult(True, self.checked, None, None, checkpoint_summary(self._matched),
                            self._first_seq, last or None, self._start)

    def fail_end(self, problem: str, event_id: str | None = None) -> VerifyResult:
        """Record ``problem`` and return the failed result."""
        self.fail(problem, event_id)
        assert self.failed is not None
        return self.failed

