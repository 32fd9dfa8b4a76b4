"""The policies API on the wire: request bodies (for the OpenAPI document and, where typed,
for decoding) and responses. No behaviour: services/policies.py decides."""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.clock import isoformat
from policies.rules import RULE_ID
from store.policy_rules import VersionInfo


# --- request bodies, for the OpenAPI document ----------------------------------------------
# Rules are read as plain JSON and validated by policies.rules.parse_rule (every problem named
# by its dotted path, conditions also in their CSV string form); these types describe that
# grammar for the document. Constraints here are ones parse_rule enforces (it checks more:
# the subject grammar, condition codes and time windows; docs/policies.md).
class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


Amount = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
Codes = Annotated[list[str], msgspec.Meta(min_length=1, max_length=300)] | str


class RuleConditions(_Strict):
    """All optional; all must hold. Lists may also be given as one string."""

    amount_above: Amount | None = None
    amount_below: Amount | None = None
    currency: Codes | None = None
    jurisdiction_in: Codes | None = None
    hours_utc: str | None = None  # "HH:MM-HH:MM", UTC, start inclusive, end exclusive
    outside_hours_utc: str | None = None
    weekdays: Annotated[list[str], msgspec.Meta(min_length=1)] | str | None = None


class RuleIn(_Strict):
    """A policy rule. ``id`` is generated when absent; ``subject`` is ``agent:<uapk_id>``,
    ``team:<team>`` or ``*``; ``conditions`` may also be the CSV form
    (``amount_above=1000;currency=EUR|USD``)."""

    subject: str
    capability: Annotated[str, msgspec.Meta(max_length=128, pattern=r"\A(?:[a-z0-9_-]+|\*):(?:[a-z0-9_-]+|\*)\Z")]
    effect: Literal["deny", "escalate", "allow"]
    id: Annotated[str, msgspec.Meta(pattern=RULE_ID.pattern)] | msgspec.UnsetType = msgspec.UNSET
    conditions: RuleConditions | str | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


Rules = Annotated[list[RuleIn], msgspec.Meta(max_length=1000)]


class ShadowRequest(_Strict):
    rules: Rules


class CaseExpect(_Strict):
    decision: Literal["allow", "deny", "escalate"]
    reason: Any = None  # a reason code, e.g. policy_denied
    rule: Any = None  # a rule id


class PolicyTestCase(_Strict):
    """``request`` is a gateway request (``agent_id`` may be omitted); ``at`` an RFC 3339 time
    to decide at (default: now)."""

    request: dict[str, Any]
    expect: CaseExpect
    name: Any = None
    at: Any = None


class PolicyTestRequest(_Strict):
    """``rules``: the candidate rule set (omitted or null: the live rules)."""

    cases: Annotated[list[PolicyTestCase], msgspec.Meta(min_length=1, max_length=1000)]
    rules: Rules | None = None


# --- wire types ----------------------------------------------------------------------------
class RuleSet(msgspec.Struct):
    version: int
    rules: list[dict[str, Any]]


class RuleWritten(msgspec.Struct):
    version: int
    rule: dict[str, Any]


class VersionWritten(msgspec.Struct):
    version: int


class VersionSummary(msgspec.Struct):
    version: int
    change: str
    author: str
    created_at: str
    rule_count: int


class VersionList(msgspec.Struct):
    items: list[VersionSummary]
    total: int


class VersionDetail(msgspec.Struct):
    version: int
    change: str
    author: str
    created_at: str
    rules: list[dict[str, Any]]


class ShadowDetail(msgspec.Struct):
    shadow_version: int
    author: str
    created_at: str
    rules: list[dict[str, Any]]


class ShadowPromoted(msgspec.Struct):
    version: int | None


class DiffOut(msgspec.Struct):
    id: int
    shadow_version: int
    mode: str
    uapk_id: str
    agent_id: str
    capability: str
    live_decision: str
    shadow_decision: str
    live_reasons: list[Any]
    shadow_reasons: list[Any]
    live_policy_version: str
    action: dict[str, Any]
    created_at: str


class DiffList(msgspec.Struct):
    items: list[DiffOut]
    total: int


class TraceStep(msgspec.Struct):
    check: str
    result: str
    detail: str
    rule: str | None


class Explained(msgspec.Struct):
    decision: str
    reasons: list[dict[str, Any]]
    trace: list[TraceStep]
    policy_version: str
    capability: str
    matched_rules: list[dict[str, Any]]
    decided_by: str | None
    policy_effect: str | None
    casbin: dict[str, Any] | None
    oracle_agrees: bool | None


class CaseOut(msgspec.Struct):
    name: str
    passed: bool
    expected: dict[str, Any]
    actual: dict[str, Any]
    trace: list[dict[str, Any]]


class TestRun(msgspec.Struct):
    passed: bool
    total: int
    failed: int
    results: list[CaseOut]


# --- stored versions, diffs and decisions as responses ---------------------------------------
def version_summary(v: VersionInfo) -> VersionSummary:
    return VersionSummary(v.version, v.change, v.author, isoformat(v.created_at) or "", len(v.rules))


def version_detail(v: VersionInfo) -> VersionDetail:
    return VersionDetail(v.version, v.change, v.author, isoformat(v.created_at) or "", v.rules)


def shadow_detail(info: VersionInfo) -> ShadowDetail:
    return ShadowDetail(info.version, info.author, isoformat(info.created_at) or "", info.rules)


def diff_out(r: Any) -> DiffOut:
    return DiffOut(
        id=r.id, shadow_version=r.shadow_version, mode=r.mode, uapk_id=r.uapk_id, agent_id=r.agent_id,
        capability=r.capability, live_decision=r.live_decision, shadow_decision=r.shadow_decision,
        live_reasons=list(r.live_reasons or []), shadow_reasons=list(r.shadow_reasons or []),
        live_policy_version=r.live_policy_version, action=dict(r.action or {}),
        created_at=isoformat(r.created_at) or "",
    )


def explained(d: Any, extra: dict[str, Any]) -> Explained:
    return Explained(
        decision=d.decision, reasons=[r.as_dict() for r in d.reasons],
        trace=[TraceStep(s.check, s.result, s.detail, s.rule) for s in d.trace],
        policy_version=d.policy_version, capability=d.capability, **extra,
    )


def test_run(results: list[Any]) -> TestRun:
    failed = sum(1 for r in results if not r.passed)
    return TestRun(failed == 0, len(results), failed,
                   [CaseOut(r.name, r.passed, r.expected, r.actual, r.trace) for r in results])
