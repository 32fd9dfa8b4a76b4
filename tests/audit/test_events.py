"""Event construction: decision events from settled decisions, params hashing, the recorder."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from audit.decision import build_decision_event
from audit.stream import FIELD, encode
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
    timestamp: datetime = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
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


def _pending(**manifest: Any) -> Any:
    """A pending decision of 'support-bot' (10/h, 100/day) for crm:update, at T."""
    import msgspec

    from gateway.evaluate import evaluate
    from gateway.schemas import GatewayActionRequest
    from policies.compile import ManifestSnapshot, OrgPolicySource, compile_org

    fields: dict[str, Any] = {"max_actions_per_hour": 10, "max_actions_per_day": 100, **manifest}
    m = ManifestSnapshot(manifest_id="m1", uapk_id="support-bot", manifest_hash="sha256:x", version="1.0.0",
                         status="active", approved=("crm:*",), **fields)
    org = compile_org(OrgPolicySource("o1", 1, (m,)), default_per_hour=1000, default_per_day=10000)
    req = msgspec.convert({"uapk_id": "support-bot", "agent_id": "agent-7",
                           "action": {"tool": "crm", "type": "update"}}, GatewayActionRequest)
    return evaluate(req, org, T)


T = 1_767_227_400.0  # 2026-01-01T00:30:00Z


@pytest.mark.parametrize("status,code,details", [
    (1, "hourly_budget_exceeded", {"limit": 10, "remaining": 0, "reset_at": "2026-01-01T01:00:00Z",
                                   "retry_after": 1800, "window": "hour"}),
    (2, "budget_exceeded", {"limit": 100, "remaining": 0, "reset_at": "2026-01-02T00:00:00Z",
                            "retry_after": 84600, "window": "day"}),
    (3, "override_token_already_used", {"capability": "crm:update"}),
])
def test_settle_turns_a_quota_status_into_the_denial(status: int, code: str, details: dict[str, Any]) -> None:
    """The one place a quota status becomes a reason; the audit event is built from it."""
    from gateway.settle import settle
    from store.quotas import QuotaResult

    d = settle(_pending(), QuotaResult(status, 10, 10, 10, 100, T, False))
    assert d.decision == "deny" and [r.code for r in d.reasons] == [code]
    assert d.reasons[0].details == details
    e = build_decision_event(d, org_id="o1", kind="gateway.execute", req=_Req(), actor=None, request_id=None,
                             interaction_id=None)
    assert e["decision"] == "deny" and e["reasons"] == [d.reasons[0].as_dict()]
    ok = settle(_pending(), QuotaResult(0, 1, 1, 10, 100, T, True))
    assert ok.decision == "allow" and ok.reasons[0].code == "all_checks_passed"


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_writer_stores_a_stream_entry_as_it_is(backend: str, settings_factory: Any) -> None:
    """The writer appends what the gateway settled; a stream field 'q' (the quota status the
    script used to add, for the writer to rewrite the outcome) changes nothing."""
    from audit.stream import GROUP, STREAM

    async with running_sink(settings_factory()) as (runtime, sink):
        e = build_decision_event(_Decision(), org_id="o9", kind="gateway.execute", req=_Req(), actor="api_key:k",
                                 request_id="r", interaction_id="i")
        await sink._writer_redis.xadd(STREAM, {FIELD: encode(e), "q": "1"})
        await sink.flush()
        (row,) = await rows(runtime, "o9")
        assert row.decision == "allow" and row.reasons == e["reasons"]
        assert (await repo.verify_org(runtime.sessions, "o9", runtime.keys)).valid
        # Acknowledged and deleted only after the commit: nothing pending, nothing left.
        assert (await sink._writer_redis.xpending(STREAM, GROUP))["pending"] == 0
        assert await sink._writer_redis.xlen(STREAM) == 0


async def test_decision_recorder_records_exactly_once(settings_factory: Any) -> None:
    """Redis mode: the event goes with the quota script's XADD (the real script), a window
    denial's too (one round trip), and ``done`` adds nothing; a decision without a quota step,
    or the embedded mode: ``done`` records."""
    from gateway.quota import spend_or_check
    from gateway.recorder import DecisionRecorder
    from gateway.settle import settle
    from store.quotas import MemoryQuotas, RedisQuotas

    async with running_sink(settings_factory()) as (runtime, sink):
        quotas: Any = RedisQuotas(runtime.redis, clock=lambda: T) if sink.redis_mode else MemoryQuotas(lambda: T)
        pending = _pending(max_actions_per_hour=1)
        recs = []
        for i in range(2):  # allowed, then the hour window denies
            rec = DecisionRecorder(sink, org_id="o1", kind="gateway.execute", req=_Req(), actor="api_key:k",
                                   request_id=f"r{i}", interaction_id=f"i{i}")
            audit = rec.quota_audit(pending)
            assert (audit is not None) == sink.redis_mode
            d = settle(pending, await spend_or_check(quotas, pending, execute=True, audit=audit))
            assert d.quota is not None and d.quota.audited == sink.redis_mode
            await rec.done(d)  # a no-op once the script carried the event
            recs.append((rec, d))
        # A deny before the quota step: no quota call, ``done`` records it.
        from gateway.decision import Decision, Reason

        deny = Decision("deny", [Reason("capability_not_granted", "no")], [], "crm:update", "pv-7", _Decision.timestamp)
        rec2 = DecisionRecorder(sink, org_id="o1", kind="gateway.evaluate", req=_Req(), actor="api_key:k",
                                request_id="r2", interaction_id="i2")
        await rec2.done(deny)
        await sink.flush()
        stored = await rows(runtime, "o1")
        assert [(r.request_id, r.decision, r.interaction_id) for r in stored] == [
            ("r0", "allow", "i0"), ("r1", "deny", "i1"), ("r2", "deny", "i2")]
        assert [r.event_id for r in stored[:2]] == [rec.event_id for rec, _ in recs]
        assert stored[1].reasons == [recs[1][1].reasons[0].as_dict()]


@pytest.mark.parametrize("backend", ["postgres"])  # Redis mode is what this tests
async def test_a_window_denial_rides_along_with_its_own_clocks_retry_after(backend: str, settings_factory: Any) -> None:
    """The quota script carries a window denial's event with the retry_after counted from its
    own clock (the gateway's differs by seconds); when the script's hour is not the one the
    gateway assumed (clock skew across the boundary), it carries nothing and ``done`` records
    the settled event. Either way the stored event is the answer's."""
    from gateway.quota import spend_or_check
    from gateway.recorder import DecisionRecorder
    from gateway.settle import settle
    from store.quotas import RedisQuotas

    redis_now = [T + 7.25]  # Redis is 7.25 s ahead of the gateway (T)
    async with running_sink(settings_factory()) as (runtime, sink):
        assert sink.redis_mode
        quotas: Any = RedisQuotas(runtime.redis, clock=lambda: redis_now[0])
        pending = _pending(max_actions_per_hour=1)
        settled = []
        for i, now in enumerate((T + 7.25, T + 7.25, T + 1800 + 3)):  # spend, deny, deny in the next hour
            redis_now[0] = now
            if i == 2:  # the next hour's window is full too
                await spend_or_check(quotas, _pending(max_actions_per_hour=1), execute=True)
                redis_now[0] = now
            rec = DecisionRecorder(sink, org_id="o3", kind="gateway.execute", req=_Req(), actor="api_key:k",
                                   request_id=f"r{i}", interaction_id=f"i{i}")
            d = settle(pending, await spend_or_check(quotas, pending, execute=True, audit=rec.quota_audit(pending)))
            assert d.quota is not None
            await rec.done(d)
            settled.append(d)
        first, denied, skewed = settled
        assert first.decision == "allow" and first.quota is not None and first.quota.audited
        assert denied.reasons[0].code == "hourly_budget_exceeded" and denied.quota is not None
        assert denied.quota.audited  # carried by the script, in the same round trip
        assert denied.reasons[0].details["retry_after"] == 1793  # 01:00 - 00:30:07.25, Redis's clock
        assert skewed.reasons[0].details["reset_at"] == "2026-01-01T02:00:00Z" and skewed.quota is not None
        assert not skewed.quota.audited  # the gateway assumed the 00:00 hour: recorded by done()
        await sink.flush()
        stored = await rows(runtime, "o3")
        assert [r.request_id for r in stored] == ["r0", "r1", "r2"]
        assert stored[1].reasons == [denied.reasons[0].as_dict()]
        assert stored[2].reasons == [skewed.reasons[0].as_dict()]
