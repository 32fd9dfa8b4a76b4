"""Issue 11, gateway decision: the checks behind the HTTP tests, without a server (paths that
do not come through JSON: policy test files in YAML, structs built in code, token claims)."""
from __future__ import annotations

import math

import pytest

from core.errors import ValidationFailed
from gateway.capability import required_capability
from gateway.captokens import CapClaims, check_action
from gateway.policy_eval import parse_cases
from gateway.schemas import Action, GatewayActionRequest
from services.tokens import validate_request


def req(**action: object) -> GatewayActionRequest:
    fields = {"tool": "payments", "type": "send", **action}
    return GatewayActionRequest(uapk_id="bot", agent_id="agent-1", action=Action(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [-0.01, -99999.0, math.inf, -math.inf, math.nan])
def test_amount_must_be_finite_and_not_negative(amount: float) -> None:
    with pytest.raises(ValidationFailed) as exc:
        required_capability(req(amount=amount))
    assert [d.field for d in exc.value.details] == ["action.amount"]


def test_zero_and_positive_amounts_pass() -> None:
    assert required_capability(req(amount=0.0)) == "payments:send"
    assert required_capability(req(amount=12.5)) == "payments:send"


@pytest.mark.parametrize("amount", [-1, float("inf"), float("nan")])
def test_policy_test_cases_from_yaml_refuse_bad_amounts(amount: float) -> None:
    # ``bastion policy test`` reads YAML, where .inf and .nan are numbers; the JSON schema's
    # ``>= 0`` alone lets inf through.
    case = {"request": {"uapk_id": "bot", "action": {"tool": "payments", "type": "send", "amount": amount}},
            "expect": {"decision": "allow"}}
    with pytest.raises(ValidationFailed) as exc:
        parse_cases([case])
    assert [d.field for d in exc.value.details] == ["cases.0.request.action.amount"]


def claims(max_amount: float) -> CapClaims:
    return CapClaims(jti="j", org_id="o", uapk_id="bot", agent_id="agent-1", manifest_hash="h",
                     capabilities=("payments:*",), constraints={"max_amount": max_amount}, exp=0, nbf=0)


@pytest.mark.parametrize("amount", [-99999.0, -0.5, math.nan, math.inf])
def test_token_max_amount_refuses_negative_and_non_finite_amounts(amount: float) -> None:
    problem = check_action(claims(100), org_id="o", uapk_id="bot", agent_id="agent-1", manifest_hash="h",
                           capability="payments:send", amount=amount, currency=None)
    assert problem is not None and problem.code == "capability_not_in_token"
    assert check_action(claims(100), org_id="o", uapk_id="bot", agent_id="agent-1", manifest_hash="h",
                        capability="payments:send", amount=100.0, currency=None) is None


@pytest.mark.parametrize("value", [-1, math.inf, math.nan])
def test_token_max_amount_constraint_must_be_finite(value: float) -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_request(["payments:send"], {"max_amount": value}, None, 900, 86400)
    assert [d.field for d in exc.value.details] == ["constraints.max_amount"]


def test_the_version_that_would_be_in_force_decides_the_status() -> None:
    from policies.compile import ManifestSnapshot, OrgPolicySource, compile_org

    def status(*ms: ManifestSnapshot) -> str | None:
        agent = compile_org(OrgPolicySource("org", 1, ms), default_per_hour=1, default_per_day=1).agent("bot")
        return None if agent is None else f"{agent.status} {agent.manifest_version}"

    def m(mid: str, st: str, at: float) -> ManifestSnapshot:
        return ManifestSnapshot(mid, "bot", st, version=mid, created_at=at)

    assert status(m("1.0.1", "suspended", 1), m("1.1.0", "rejected", 2)) == "suspended 1.0.1"
    assert status(m("1.0.1", "suspended", 1), m("1.1.0", "pending", 2)) == "suspended 1.0.1"
    assert status(m("1.0.0", "pending", 1), m("1.1.0", "rejected", 2)) == "pending 1.0.0"
    assert status(m("1.0.0", "revoked", 1), m("1.1.0", "pending", 2), m("1.2.0", "rejected", 3)) == "pending 1.1.0"
    assert status(m("1.0.0", "superseded", 1), m("1.1.0", "revoked", 2)) == "revoked 1.1.0"
    assert status(m("1.0.0", "active", 1), m("1.1.0", "suspended", 2)) == "active 1.0.0"


@pytest.mark.parametrize("text", ["a\x7fb", "a\u202eb", "a\x85b", "a\u200bb", "two\nlines"])
def test_rule_descriptions_use_the_one_text_rule(text: str) -> None:
    from policies.rules import parse_rule

    rule, issues = parse_rule({"subject": "*", "capability": "crm:delete", "effect": "deny", "description": text},
                              "", auto_id="r1")
    assert rule is None and [i.field for i in issues] == ["description"]
