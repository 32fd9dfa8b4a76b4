"""Step 4 of a decision: its audit event, handed over exactly once (see the class doc)."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from audit.decision import build_decision_event
from audit.event import reason_dict
from audit.stream import encode, stream_key
from gateway.decision import Decision, Pending
from gateway.settle import KNOWN_BEFORE_THE_CALL, assumed, settle
from store.audit_writer import AuditSink
from store.quotas import DAY_EXHAUSTED, HOUR_EXHAUSTED, OVERRIDE_USED, RETRY_AFTER_MARK, QuotaAudit


def every_outcome(d: Decision) -> bool:
    return True


class DecisionRecorder:
    """Records one gateway decision exactly once, off the hot path. The event is always built
    from a settled decision (gateway/settle.py), so it says what the answer says.

    Redis mode: :meth:`quota_audit` gives the quota call the event of every outcome it can
    return (``settle.KNOWN_BEFORE_THE_CALL``), one per quota status; the script XADDs the one
    matching its status in the same round trip (``QuotaResult.audited``). A window denial's
    retry_after is written by the script from its clock; when its window is not the one this
    process assumed, it carries nothing. Every other decision — those that never reach the
    quota step, a window denial the script did not carry, outcomes the caller keeps for later
    (an execute's escalation: the approval step decides), and every decision in the embedded
    mode — is recorded by :meth:`done` (one XADD, or the in-process queue). Either way ``done`` must be awaited before the answer goes out: it raises
    ``ServiceUnavailable`` when the event cannot be queued."""

    def __init__(
        self, sink: AuditSink | None, *, org_id: str, kind: str, req: Any, actor: str | None,
        request_id: str | None, interaction_id: str,
    ):
        self.sink = sink
        self.org_id, self.kind, self.req = org_id, kind, req
        self.actor, self.request_id, self.interaction_id = actor, request_id, interaction_id
        self.event_id = str(uuid.uuid4())

    def event(self, d: Decision) -> dict[str, Any]:
        """The audit event of the settled decision ``d``."""
        e = build_decision_event(
            d, org_id=self.org_id, kind=self.kind, req=self.req, actor=self.actor, request_id=self.request_id,
            interaction_id=self.interaction_id, include_params=bool(self.sink and self.sink.include_params),
        )
        e["event_id"] = self.event_id
        limits = d.limits
        if limits:
            e["details"] = dict(e.get("details") or {}, limits={"hour": limits[0], "day": limits[1]})
        return e

    def quota_audit(
        self, pending: Pending, *, carried: Callable[[Decision], bool] = every_outcome
    ) -> QuotaAudit | None:
        """The events for the quota script (Redis mode), or None. ``carried``: which settled
        outcomes the script may hand over (the others are recorded by :meth:`done`)."""
        if self.sink is None or not self.sink.redis_mode or not pending.reaches_quota:
            return None
        head = b""
        tails: dict[int, bytes] = {}
        resets: dict[int, int] = {}
        for status in KNOWN_BEFORE_THE_CALL:
            if status == OVERRIDE_USED and pending.override is None:
                continue  # the script looks up no token: it cannot return that status
            q = assumed(pending, status)
            d = settle(pending, q)
            if not carried(d):
                continue
            if not head:
                # Only the outcome differs between the statuses: the event (params digest and
                # all) is built once, its head shared, and each status adds its own tail.
                e = self.event(d)
                del e["decision"], e["reasons"]
                head = encode(e)[:-1] + b","  # the object without its closing brace
            outcome = {"decision": d.decision, "reasons": [reason_dict(r) for r in d.reasons]}
            tail = encode(outcome)[1:]  # the rest, without the opening brace
            if q is not None and status in (HOUR_EXHAUSTED, DAY_EXHAUSTED):
                # Settled with this process's clock; the script writes the retry_after of its
                # own clock and carries the event only if its window resets at this time.
                reset = q.hour_reset if status == HOUR_EXHAUSTED else q.day_reset
                number = b'"retry_after":%d' % q.retry_after(reset)
                if tail.count(number) != 1:
                    continue  # not where the script could put its own (never, by construction)
                tail = tail.replace(number, b'"retry_after":' + RETRY_AFTER_MARK)
                resets[status] = reset
            tails[status] = tail
        if not tails:
            return None
        return QuotaAudit(stream_key(), head, tails, resets)

    async def done(self, d: Decision) -> None:
        if self.sink is None or (d.quota is not None and d.quota.audited):
            return
        await self.sink.record(self.event(d))
