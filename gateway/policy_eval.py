"""Evaluating policy rules without enforcing them: explain one request, run test cases.

Test cases run ``gateway.evaluate.evaluate`` on an org snapshot and settle it as if the quota
passed (``gateway.settle.assumed``): nothing is spent, no approval is created, nothing is
recorded, no Redis. They are deterministic: the time is the case's ``at`` (UTC) when it has
one. Explain decides through the gateway (``Gateway.explain``: the quota is read, not spent).
Used by the Policies API (api/policies.py) and ``bastion policy test`` (bastion/policy_cli.py).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core import wire
from core.errors import FieldIssue, ValidationFailed
from gateway.capability import required_capability
from gateway.decision import Decision
from gateway.evaluate import Verifiers, evaluate
from gateway.schemas import GatewayActionRequest
from gateway.settle import assumed, settle
from policies.compile import CompiledOrg, ManifestSnapshot, OrgPolicySource, compile_org
from policies.rules import (
    Rule,
    RuleContext,
    RuleIndex,
    build_rules_enforcer,
    casbin_verdict,
)

EXPECT_KEYS = ("decision", "reason", "rule")
DECISIONS = ("allow", "deny", "escalate")
UNLIMITED = 1_000_000_000


def with_candidate(base: CompiledOrg, rules: Iterable[Rule] | None, label: str = "candidate") -> CompiledOrg:
    """``base`` (its manifests) with ``rules`` instead of its live rules (None keeps them)."""
    if rules is None:
        return dataclasses.replace(base, shadow=None)
    return dataclasses.replace(base, rules=RuleIndex.build(rules), shadow=None, policy_version=label)


def org_from_agents(agents: Any, where: str = "agents") -> CompiledOrg:
    """A snapshot from a YAML list of agents (``uapk_id``, ``team``, ``approved``,
    ``require_human_approval``, ``max_actions_per_hour``/``_day``), for tests without a database."""
    if not isinstance(agents, list):
        raise ValidationFailed("The test file is not valid.", [FieldIssue(where, "Must be a list of agents.")])
    manifests: list[ManifestSnapshot] = []
    issues: list[FieldIssue] = []
    allowed = {"uapk_id", "team", "approved", "require_human_approval", "max_actions_per_hour", "max_actions_per_day",
               "status"}
    for i, a in enumerate(agents):
        if not isinstance(a, Mapping) or not isinstance(a.get("uapk_id"), str):
            issues.append(FieldIssue(f"{where}.{i}.uapk_id", "Required (a string)."))
            continue
        for k in a:
            if k not in allowed:
                issues.append(FieldIssue(f"{where}.{i}.{k}", "Unknown field."))
        approved = a.get("approved", [])
        human = a.get("require_human_approval", [])
        if not isinstance(approved, list) or not all(isinstance(x, str) for x in approved):
            issues.append(FieldIssue(f"{where}.{i}.approved", "Must be a list of capability patterns."))
            continue
        if not isinstance(human, list) or not all(isinstance(x, str) for x in human):
            issues.append(FieldIssue(f"{where}.{i}.require_human_approval", "Must be a list of capability patterns."))
            continue
        team = a.get("team")
        manifests.append(ManifestSnapshot(
            manifest_id=f"test-{i}", uapk_id=a["uapk_id"], status=str(a.get("status", "active")),
            approved=tuple(approved), require_human_approval=tuple(human),
            max_actions_per_hour=a.get("max_actions_per_hour"), max_actions_per_day=a.get("max_actions_per_day"),
            team=team if isinstance(team, str) else None, manifest_hash=f"test-{i}", version="test",
        ))
    if issues:
        raise ValidationFailed("The test file is not valid.", issues)
    return compile_org(OrgPolicySource("test", 0, tuple(manifests)), default_per_hour=UNLIMITED,
                       default_per_day=UNLIMITED)


# --- cases ---------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    request: GatewayActionRequest
    expect: dict[str, Any]
    at: float | None = None


@dataclass
class CaseResult:
    name: str
    passed: bool
    expected: dict[str, Any]
    actual: dict[str, Any]
    trace: list[dict[str, Any]] = field(default_factory=list)


def _parse_at(value: Any, where: str) -> float:
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.timestamp()
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            dt = None
        if dt is not None:
            return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    raise ValidationFailed("Test cases failed validation.", [FieldIssue(where, "Must be an RFC 3339 time, e.g. 2026-01-05T08:00:00Z.")])


def parse_cases(raw: Any, where: str = "cases") -> list[Case]:
    if not isinstance(raw, list) or not raw:
        raise ValidationFailed("Test cases failed validation.", [FieldIssue(where, "Must be a non-empty list of cases.")])
    if len(raw) > 1000:
        raise ValidationFailed("Test cases failed validation.", [FieldIssue(where, "At most 1000 cases.")])
    out: list[Case] = []
    issues: list[FieldIssue] = []
    for i, c in enumerate(raw):
        pre = f"{where}.{i}"
        if not isinstance(c, Mapping):
            issues.append(FieldIssue(pre, "Must be an object with request and expect."))
            continue
        for k in c:
            if k not in ("name", "request", "expect", "at"):
                issues.append(FieldIssue(f"{pre}.{k}", "Unknown field (name, at, request, expect)."))
        req_raw = c.get("request")
        if isinstance(req_raw, Mapping) and "agent_id" not in req_raw:
            req_raw = {**req_raw, "agent_id": "policy-test"}
        try:
            req = wire.convert(req_raw, GatewayActionRequest, at=f"{pre}.request")
        except ValidationFailed as exc:
            issues.extend(exc.details)
            continue
        try:
            required_capability(req)
        except ValidationFailed as exc:
            issues.extend(FieldIssue(f"{pre}.request.{d.field}", d.issue) for d in exc.details)
            continue
        expect = c.get("expect")
        if not isinstance(expect, Mapping) or expect.get("decision") not in DECISIONS:
            issues.append(FieldIssue(f"{pre}.expect.decision", "Required: allow, deny or escalate."))
            continue
        bad = [k for k in expect if k not in EXPECT_KEYS]
        if bad:
            issues.append(FieldIssue(f"{pre}.expect.{bad[0]}", "Unknown field (decision, reason, rule)."))
            continue
        at = None
        if c.get("at") is not None:
            try:
                at = _parse_at(c["at"], f"{pre}.at")
            except ValidationFailed as exc:
                issues.extend(exc.details)
                continue
        name = c.get("name") if isinstance(c.get("name"), str) else f"case {i + 1}"
        out.append(Case(name, req, dict(expect), at))
    if issues:
        raise ValidationFailed("Test cases failed validation.", issues)
    return out


def outcome(d: Decision) -> dict[str, Any]:
    rule = d.policy.rule.id if d.policy is not None and d.policy.rule is not None and d.policy.effect else None
    return {"decision": d.decision, "reason": d.reasons[0].code if d.reasons else None, "rule": rule}


async def run_cases(org: CompiledOrg, cases: list[Case], *, cap_verifier: Any = None) -> list[CaseResult]:
    results: list[CaseResult] = []
    for case in cases:
        now = case.at if case.at is not None else time.time()
        # No override tokens here (no signing keys); the quota passes with nothing used.
        pending = evaluate(case.request, org, now, Verifiers(capabilities=cap_verifier))
        d = settle(pending, assumed(pending))
        actual = outcome(d)
        passed = all(actual.get(k) == v for k, v in case.expect.items())
        results.append(CaseResult(case.name, passed, dict(case.expect), actual,
                                  [dataclasses.asdict(s) for s in d.trace]))
    return results


def format_results(results: list[CaseResult]) -> str:
    """``opa test``-like output: one line per case, an expected/actual diff for failures."""
    lines: list[str] = []
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.name}")
        if not r.passed:
            keys = [k for k in EXPECT_KEYS if k in r.expected]
            lines.append("      expected: " + "  ".join(f"{k}={r.expected[k] if r.expected[k] is not None else '-'}" for k in keys))
            lines.append("      actual:   " + "  ".join(f"{k}={r.actual.get(k) if r.actual.get(k) is not None else '-'}" for k in keys))
            for k in keys:
                if r.actual.get(k) != r.expected[k]:
                    lines.append(f"      - {k}: expected {r.expected[k]!r}, got {r.actual.get(k)!r}")
    failed = sum(1 for r in results if not r.passed)
    lines.append(f"{len(results)} cases: {len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


# --- explain ---------------------------------------------------------------------------------
def explain_rules(org: CompiledOrg, d: Decision, req: GatewayActionRequest) -> dict[str, Any]:
    """The rules that matched (from the index) and pycasbin's verdict on the same rules."""
    agent = org.agent(req.uapk_id)
    matched = []
    if d.policy is not None:
        for m in d.policy.matched:
            # "missing": request fields the rule's conditions read but the request lacks; a deny
            # or escalate condition on them holds, an allow condition fails (fail closed).
            matched.append({**m.rule.to_dict(), "conditions_hold": m.held, "missing": list(m.missing)})
    out: dict[str, Any] = {
        "matched_rules": matched,
        "decided_by": d.policy.rule.id if d.policy is not None and d.policy.rule is not None and d.policy.effect else None,
        "policy_effect": d.policy.effect if d.policy is not None else None,
    }
    if agent is not None and agent.active and d.policy is not None:
        now = d.timestamp.timestamp()
        ctx = RuleContext.of_request(req, now)
        enforcer = build_rules_enforcer(org.rules.rules, {req.uapk_id: agent.team})
        effect, lines = casbin_verdict(enforcer, req.uapk_id, d.capability, ctx)
        out["casbin"] = {"effect": effect, "explain": lines}
        out["oracle_agrees"] = effect == d.policy.effect
    else:
        out["casbin"] = None
        out["oracle_agrees"] = None
    return out
