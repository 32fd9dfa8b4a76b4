"""The decision steps as pure functions (no PostgreSQL, no Redis): evaluate does no I/O and
changes nothing it is given; settle is the one place a quota status becomes a reason; the
events the quota script gets (head + a tail per status) are exactly the settled decisions'."""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from gateway.decision import Pending
from gateway.evaluate import evaluate
from gateway.recorder import DecisionRecorder
from gateway.schemas import GatewayActionRequest
from gateway.settle import assumed, settle
from policies.compile import CompiledOrg, ManifestSnapshot, OrgPolicySource, compile_org
from store.quotas import DAY_EXHAUSTED, HOUR_EXHAUSTED, OK, OVERRIDE_USED, QuotaResult

T = 1_767_227_400.0  # 2026-01-01T00:30:00Z


def org() -> CompiledOrg:
    bot = ManifestSnapshot(manifest_id="m1", uapk_id="bot", manifest_hash="sha256:x", version="1.0.0",
                           status="active", approved=("crm:*", "email:send"), require_human_approval=("crm:delete",),
                           max_actions_per_hour=5, max_actions_per_day=50)
    return compile_org(OrgPolicySource("o1", 3, (bot,)), default_per_hour=1000, default_per_day=10000)


def request(tool: str = "email", type: str = "send", **extra: Any) -> GatewayActionRequest:
    return msgspec.convert({"uapk_id": "bot", "agent_id": "a-1", "action": {"tool": tool, "type": type, "params": {"n": 1}},
                            **extra}, GatewayActionRequest)


def test_evaluate_is_a_function_of_its_inputs() -> None:
    o = org()
    first, again = evaluate(request(), o, T), evaluate(request(), o, T)
    assert first == again and first.reaches_quota and first.now == T
    assert [s.check for s in first.trace] == ["manifest", "capability_token", "capability", "human_approval"]
    denied = evaluate(request(tool="files", type="read"), o, T)
    assert not denied.reaches_quota and denied.denied is not None and denied.denied.code == "capability_not_granted"
    assert [(s.check, s.result) for s in denied.trace][-1] == ("quota", "skip")
    assert settle(denied, None).reasons == [denied.denied]


@pytest.mark.parametrize("status,decision,code", [
    (OK, "allow", "all_checks_passed"), (HOUR_EXHAUSTED, "deny", "hourly_budget_exceeded"),
    (DAY_EXHAUSTED, "deny", "budget_exceeded"), (OVERRIDE_USED, "deny", "override_token_already_used"),
])
def test_settle_maps_each_status_once_and_leaves_the_pending_decision_alone(status: int, decision: str, code: str) -> None:
    p = evaluate(request(), org(), T)
    trace = list(p.trace)
    d = settle(p, QuotaResult(status, 5, 50, 5, 50, T, status == OK))
    assert (d.decision, [r.code for r in d.reasons]) == (decision, [code])
    assert d.trace[-1].check == "quota" and p.trace == trace  # settle copies, never mutates
    if status in (HOUR_EXHAUSTED, DAY_EXHAUSTED):
        assert set(d.reasons[0].details) == {"limit", "remaining", "reset_at", "retry_after", "window"}
    # an escalation is checked too: an exhausted window denies it (deny beats escalate)
    e = settle(evaluate(request(tool="crm", type="delete"), org(), T), QuotaResult(status, 5, 50, 5, 50, T, False))
    assert e.decision == ("escalate" if status == OK else "deny")


def _recorder() -> DecisionRecorder:
    sink: Any = SimpleNamespace(redis_mode=True, include_params=True)  # a Redis-mode sink's settings
    return DecisionRecorder(sink, org_id="o1", kind="gateway.execute", req=request(), actor="api_key:k",
                            request_id="r1", interaction_id="i1")


@pytest.mark.parametrize("tool,type", [("email", "send"), ("crm", "delete")])
def test_the_quota_scripts_events_are_the_settled_decisions(tool: str, type: str) -> None:
    rec = _recorder()
    p: Pending = evaluate(request(tool, type), org(), T)
    audit = rec.quota_audit(p)
    # no token: the script cannot answer 3
    assert audit is not None and set(audit.tails) == {OK, HOUR_EXHAUSTED, DAY_EXHAUSTED}
    for status, tail in audit.tails.items():
        settled = rec.event(settle(p, assumed(p, status)))
        if status in (HOUR_EXHAUSTED, DAY_EXHAUSTED):
            # A window denial: the script writes its own clock's retry_after where the mark is,
            # and carries it only if its window resets when this process's does.
            q = assumed(p, status)
            assert q is not None
            reset = q.hour_reset if status == HOUR_EXHAUSTED else q.day_reset
            assert audit.resets[status] == reset
            seconds = settled["reasons"][0]["details"]["retry_after"]
            tail = tail.replace(b"@retry_after@", str(seconds).encode())
        assert json.loads(audit.head + tail) == json.loads(json.dumps(settled))
    # An execute's escalation is left to the approval step.
    # (Its window denials are denies: they ride along.)
    kept = rec.quota_audit(p, carried=lambda d: d.decision != "escalate")
    assert kept is not None
    assert set(kept.tails) == ({HOUR_EXHAUSTED, DAY_EXHAUSTED} if tool == "crm" else {OK, HOUR_EXHAUSTED, DAY_EXHAUSTED})


def test_nothing_is_carried_for_a_decision_that_ends_before_the_quota() -> None:
    assert _recorder().quota_audit(evaluate(request("files", "read"), org(), T)) is None
