"""One gateway decision's audit event, handed over exactly once (see the class doc)."""
from __future__ import annotations

import uuid
from typing import Any

from audit.decision import build_decision_event
from audit.event import reason_dict as _reason
from audit.stream import encode, stream_key
from store.audit_writer import AuditSink


class DecisionRecorder:
    """Records one gateway decision exactly once, off the hot path.

    Redis mode: :meth:`quota_entry` gives the quota call the encoded event to XADD from the
    quota script (same round trip); the pipeline calls it right before the quota step with
    the outcome that holds if the quota admits the action. Decisions that never reach the
    quota step, and every decision in the embedded mode, are recorded by :meth:`done`
    (``record``: one XADD, or the in-process queue). Either way ``done`` must be awaited before
    the answer goes out: it raises ``ServiceUnavailable`` when the event cannot be queued."""

    def __init__(
        self, sink: AuditSink | None, *, org_id: str, kind: str, req: Any, actor: str | None,
        request_id: str | None, interaction_id: str,
    ):
        self.sink = sink
        self.org_id, self.kind, self.req = org_id, kind, req
        self.actor, self.request_id, self.interaction_id = actor, request_id, interaction_id
        self.event_id = str(uuid.uuid4())
        self.handed_over = False

    def _event(self, d: Any) -> dict[str, Any]:
        e = build_decision_event(
            d, org_id=self.org_id, kind=self.kind, req=self.req, actor=self.actor, request_id=self.request_id,
            interaction_id=self.interaction_id, include_params=bool(self.sink and self.sink.include_params),
        )
        e["event_id"] = self.event_id
        limits = getattr(d, "limits", None)
        if limits:
            e["details"] = dict(e.get("details") or {}, limits={"hour": limits[0], "day": limits[1]})
        return e

    def quota_entry(self, d: Any, escalate: Any = None) -> tuple[str, bytes] | None:
        """(stream key, encoded event) for the quota script to XADD (Redis mode), or None."""
        if self.sink is None or not self.sink.redis_mode:
            return None
        e = self._event(d)
        if escalate is not None:
            e["decision"], e["reasons"] = "escalate", [_reason(escalate)]
        elif getattr(d, "override", None) is not None:
            e["decision"] = "allow"
            e["reasons"] = [{"code": "override_token_accepted", "message": "Allowed by a human's override token.",
                             "details": {"approval_id": getattr(d.override, "approval_id", None)}}]
        else:
            e["decision"] = "allow"
            e["reasons"] = [{"code": "all_checks_passed", "message": "All checks passed.", "details": {}}]
        self.handed_over = True
        return stream_key(), encode(e)

    async def done(self, d: Any) -> None:
        if self.handed_over or self.sink is None:
            return
        await self.sink.record(self._event(d))
