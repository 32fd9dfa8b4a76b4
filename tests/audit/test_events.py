"""Event construction: decision events, quota-status finalization, params hashing."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from audit.decision import build_decision_event
from audit.stream import FIELD, encode
from store.audit_writer import finalize
from store import audit as repo
from tests.audit.helpers import rows, running_sink


@dataclass
class _Reason:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


@dataclass
class _Decision:
    decision: str = "allow"
    reasons: list[Any] = field(default_factory=lambda: [_Reason("all_checks_passed", "All checks passed.")])
    capability: str = "crm:update"
    policy_version: str = "pv-7"
    timestamp: datetime = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    override: Any = None


@dataclass
class _Action:
    tool: str = "crm"
    type: str = "update"
    params: dict[str, Any] | None = None
    amount: float | None = None
    currency: str | None = None


@dataclass
class _Req:
    uapk_id: str = "support-bot"
    agent_id: str = "agent-7"
    action: _Action = field(default_factory=_Action)


def test_decision_event_fields() -> None:
    req = _Req(action=_Action(params={"id": 5, "note": "x"}, amount=12.5, currency="EUR"))
    e = build_decision_event(_Decision(), org_id="o1", kind="gateway.execute", req=req, actor="api_key:k1",
                             request_id="rq", interaction_id="ix")
    assert e["org_id"] == "o1" and e["kind"] == "gateway.execute" and e["actor"] == "api_key:k1"
    assert (e["uapk_id"], e["agent_id"], e["capability"], e["decision"]) == ("support-bot", "agent-7", "crm:update", "allow")
    assert e["reasons"] == [{"code": "all_checks_passed", "message": "All checks passed.", "details": {}}]
    assert e["policy_version"] == "pv-7" and e["request_id"] == "rq" and e["interaction_id"] == "ix"
    assert e["created_at"] == "2026-01-02T03:04:05.678901Z"
    assert e["params_hash"] == repo.params_digest({"id": 5, "note": "x"}) and e["params"] is None
    assert e["details"] == {"amount": 12.5, "currency": "EUR"}
    with_params = build_decision_event(_Decision(), org_id="o1", kind="gateway.execute", req=req, actor=None,
                                       request_id=None, interaction_id=None, include_params=True)
    assert with_params["params"] == {"id": 5, "note": "x"}


def test_params_hash_is_canonical() -> None:
    assert repo.params_digest({"b": 1, "a": [1.0, "x"]}) == repo.params_digest({"a": [1, "x"], "b": 1})
    assert repo.params_digest(None) == repo.params_digest({})
    repo.params_digest({"big": 2**70, "nan": float("nan")})  # canonicalisable after jcs_safe


@pytest.mark.parametrize("status,code,window", [(1, "hourly_budget_exceeded", "hour"), (2, "budget_exceeded", "day"),
                                                (3, "override_token_already_used", None)])
def test_finalize_turns_a_quota_status_into_the_denial(status: int, code: str, window: str | None) -> None:
    e = build_decision_event(_Decision(), org_id="o1", kind="gateway.execute", req=_Req(), actor=None,
                             request_id=None, interaction_id=None)
    e["details"] = {"limits": {"hour": 10, "day": 100}}
    out = finalize(e, {b"q": str(status).encode()})
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == code
    if window:
        assert out["reasons"][0]["details"]["window"] == window
        assert out["reasons"][0]["details"]["limit"] == (10 if window == "hour" else 100)
    assert finalize(e, {b"q": b"0"}) == e and finalize(e, {}) == e


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_writer_applies_the_quota_status_of_a_stream_entry(backend: str, settings_factory: Any) -> None:
    from audit.stream import GROUP, STREAM

    async with running_sink(settings_factory()) as (runtime, sink):
        e = build_decision_event(_Decision(), org_id="o9", kind="gateway.execute", req=_Req(), actor="api_key:k",
                                 request_id="r", interaction_id="i")
        await sink._writer_redis.xadd(STREAM, {FIELD: encode(e), "q": "1"})
        await sink.flush()
        (row,) = await rows(runtime, "o9")
        assert row.decision == "deny" and row.reasons[0]["code"] == "hourly_budget_exceeded"
        assert (await repo.verify_org(runtime.sessions, "o9", runtime.keys)).valid
        # Acknowledged and deleted only after the commit: nothing pending, nothing left.
        assert (await sink._writer_redis.xpending(STREAM, GROUP))["pending"] == 0
        assert await sink._writer_redis.xlen(STREAM) == 0


async def test_decision_recorder_records_exactly_once(settings_factory: Any) -> None:
    """Redis mode: the event goes with the quota script's XADD (simulated here) and ``done``
    adds nothing; a decision without a quota step, or the embedded mode: ``done`` records."""
    from audit.stream import STREAM
    from gateway.recorder import DecisionRecorder

    async with running_sink(settings_factory()) as (runtime, sink):
        d = _Decision()
        rec = DecisionRecorder(sink, org_id="o5", kind="gateway.execute", req=_Req(), actor="api_key:k",
                               request_id="r1", interaction_id="i1")
        entry = rec.quota_entry(d)
        if sink.redis_mode:
            assert entry is not None
            assert entry[0] == STREAM
            await sink._writer_redis.xadd(entry[0], {FIELD: entry[1], "q": "0"})  # what quota.lua does
        else:
            assert entry is None
        await rec.done(d)
        # A deny before the quota step: no entry, ``done`` records it.
        deny = _Decision(decision="deny", reasons=[_Reason("capability_not_granted", "no")])
        rec2 = DecisionRecorder(sink, org_id="o5", kind="gateway.evaluate", req=_Req(), actor="api_key:k",
                                request_id="r2", interaction_id="i2")
        await rec2.done(deny)
        await sink.flush()
        stored = await rows(runtime, "o5")
        assert [(r.request_id, r.decision, r.interaction_id) for r in stored] == [("r1", "allow", "i1"), ("r2", "deny", "i2")]
        assert stored[0].event_id == rec.event_id
