"""Policies API: org policy rules, versions and rollback, explain, test, shadow deployments.

Roles: ``policies:read`` (viewer and up) lists, explains and tests; ``policies:write``
(policy_author, admin, owner) changes rules. Every change publishes a new policy version
(store.policy_rules) that every gateway process applies within a second. docs/policies.md.
"""
from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from core.clock import isoformat
from core.errors import FieldIssue, NotFound, ValidationFailed
from gateway import policy_eval
from gateway.schemas import GatewayActionRequest
from httpkit.auth import admit
from httpkit.openapi import NO_BODY, declared_body, request_body
from httpkit.pagination import Page, pagination
from policies.rules import parse_rule, parse_rules
from store import policy_rules as repo
from store.runtime import Runtime


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
    id: Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9_.-]{0,62}\Z")] | msgspec.UnsetType = msgspec.UNSET
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


# --- helpers -------------------------------------------------------------------------------
def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def _json(request: Request[Any, Any, Any]) -> Any:
    """The route's declared body (``request_body``), read after the role check."""
    return await declared_body(request)


def _object(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed(details=[FieldIssue("body", "Must be a JSON object.")])
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise ValidationFailed(details=[FieldIssue(str(k)[:64], "Unknown field.") for k in unknown])
    return body


async def _compiled(request: Request[Any, Any, Any], org_id: str) -> Any:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:  # pragma: no cover - the composed app always has one
        raise NotFound("The gateway is not running in this process.")
    return await gateway.state.get(org_id)


def _audit(request: Request[Any, Any, Any], caller: Any, org_id: str) -> Any:
    """The audit-trail hook the store calls inside each change's transaction."""
    from audit.changes import record_change

    async def hook(kind: str, details: dict[str, Any], _session: Any) -> None:
        await record_change(request, caller, kind, org_id=org_id, details=details)

    return hook


def _version_summary(v: repo.VersionInfo) -> VersionSummary:
    return VersionSummary(v.version, v.change, v.author, isoformat(v.created_at) or "", len(v.rules))


class PoliciesController(Controller):
    path = "/api/v1/orgs/{org_id:str}/policies"
    tags = ["policies"]

    # --- rules ---------------------------------------------------------------------------
    @get("/rules", summary="The live rule set and its version")
    async def list_rules(self, request: Request[Any, Any, Any], org_id: str) -> RuleSet:
        await admit(request, org_id, "policies", "read")
        async with _runtime(request).sessions() as session:
            version = await repo.current_version(session, org_id)
            rules = await repo.load_rules(session, org_id)
        return RuleSet(version, [r.to_dict() for r in rules])

    @post("/rules", status_code=HTTP_201_CREATED, summary="Add a rule (a new policy version)",
          opt=request_body(RuleIn, decode=False))
    async def add_rule(self, request: Request[Any, Any, Any], org_id: str) -> RuleWritten:
        caller = await admit(request, org_id, "policies", "write")
        body = await _json(request)
        rule, issues = parse_rule(body, "", auto_id=f"r-{secrets.token_hex(4)}")
        if rule is None:
            raise ValidationFailed("The rule failed validation.", issues)
        version, rule = await repo.add_rule(_runtime(request), org_id, rule, caller.actor,
                                             _audit(request, caller, org_id))
        return RuleWritten(version, rule.to_dict())

    @delete("/rules/{rule_id:str}", status_code=HTTP_200_OK, summary="Delete a rule (a new policy version)")
    async def delete_rule(self, request: Request[Any, Any, Any], org_id: str, rule_id: str) -> VersionWritten:
        caller = await admit(request, org_id, "policies", "write")
        return VersionWritten(await repo.delete_rule(_runtime(request), org_id, rule_id, caller.actor,
                                                     _audit(request, caller, org_id)))

    # --- versions ------------------------------------------------------------------------
    @get("/versions", summary="Policy versions, newest first", dependencies=pagination())
    async def list_versions(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> VersionList:
        await admit(request, org_id, "policies", "read")
        async with _runtime(request).sessions() as session:
            items, total = await repo.list_versions(session, org_id, page.limit, page.offset)
        return VersionList([_version_summary(v) for v in items], total)

    @get("/versions/{version:int}", summary="One policy version: the whole rule set")
    async def get_version(self, request: Request[Any, Any, Any], org_id: str, version: int) -> VersionDetail:
        await admit(request, org_id, "policies", "read")
        async with _runtime(request).sessions() as session:
            v = await repo.get_version(session, org_id, version)
        if v is None:
            raise NotFound()
        return VersionDetail(v.version, v.change, v.author, isoformat(v.created_at) or "", v.rules)

    @post("/versions/{version:int}/rollback", status_code=HTTP_201_CREATED,
          summary="Publish a new version equal to an older one", opt=NO_BODY)
    async def rollback(self, request: Request[Any, Any, Any], org_id: str, version: int) -> VersionDetail:
        caller = await admit(request, org_id, "policies", "write")
        await declared_body(request)
        runtime = _runtime(request)
        new = await repo.rollback(runtime, org_id, version, caller.actor, _audit(request, caller, org_id))
        async with runtime.sessions() as session:
            v = await repo.get_version(session, org_id, new)
        assert v is not None
        return VersionDetail(v.version, v.change, v.author, isoformat(v.created_at) or "", v.rules)

    # --- explain and test ----------------------------------------------------------------
    @post("/explain", status_code=HTTP_200_OK, summary="Decision, trace and matching rules (nothing spent)",
          opt=request_body(GatewayActionRequest))
    async def explain(self, request: Request[Any, Any, Any], org_id: str) -> Explained:
        await admit(request, org_id, "policies", "read")
        req: GatewayActionRequest = await _json(request)
        compiled = await _compiled(request, org_id)
        d = await request.app.state.gateway.explain(req, compiled)
        extra = policy_eval.explain_rules(compiled, d, req)
        return Explained(
            decision=d.decision, reasons=[r.as_dict() for r in d.reasons],
            trace=[TraceStep(s.check, s.result, s.detail, s.rule) for s in d.trace],
            policy_version=d.policy_version, capability=d.capability, **extra,
        )

    @post("/test", status_code=HTTP_200_OK, summary="Run cases against a candidate rule set (live untouched)",
          opt=request_body(PolicyTestRequest, decode=False))
    async def test_rules(self, request: Request[Any, Any, Any], org_id: str) -> TestRun:
        await admit(request, org_id, "policies", "read")
        body = _object(await _json(request), ("rules", "cases"))
        rules = parse_rules(body["rules"], "rules") if body.get("rules") is not None else None
        cases = policy_eval.parse_cases(body.get("cases"), "cases")
        compiled = policy_eval.with_candidate(await _compiled(request, org_id), rules)
        tokens = getattr(request.app.state, "tokens", None)
        results = await policy_eval.run_cases(compiled, cases, cap_verifier=getattr(tokens, "verifier", None))
        failed = sum(1 for r in results if not r.passed)
        return TestRun(failed == 0, len(results), failed,
                       [CaseOut(r.name, r.passed, r.expected, r.actual, r.trace) for r in results])

    # --- shadow --------------------------------------------------------------------------
    @post("/shadow", status_code=HTTP_201_CREATED, summary="Deploy a candidate rule set as shadow",
          opt=request_body(ShadowRequest, decode=False))
    async def deploy_shadow(self, request: Request[Any, Any, Any], org_id: str) -> ShadowDetail:
        caller = await admit(request, org_id, "policies", "write")
        body = _object(await _json(request), ("rules",))
        rules = parse_rules(body.get("rules"), "rules")
        runtime = _runtime(request)
        await repo.deploy_shadow(runtime, org_id, rules, caller.actor, _audit(request, caller, org_id))
        return await self._shadow(runtime, org_id)

    async def _shadow(self, runtime: Runtime, org_id: str) -> ShadowDetail:
        async with runtime.sessions() as session:
            info = await repo.shadow_info(session, org_id)
        if info is None:
            raise NotFound("No shadow rule set is deployed.")
        return ShadowDetail(info.version, info.author, isoformat(info.created_at) or "", info.rules)

    @get("/shadow", summary="The deployed shadow rule set")
    async def get_shadow(self, request: Request[Any, Any, Any], org_id: str) -> ShadowDetail:
        await admit(request, org_id, "policies", "read")
        return await self._shadow(_runtime(request), org_id)

    @get("/shadow/diffs", summary="Requests the shadow set decided differently, newest first",
         dependencies=pagination())
    async def diffs(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> DiffList:
        await admit(request, org_id, "policies", "read")
        gateway = getattr(request.app.state, "gateway", None)
        if gateway is not None:
            await gateway.shadow.flush()  # this process's buffer; others flush on their own
        async with _runtime(request).sessions() as session:
            rows, total = await repo.list_diffs(session, org_id, page.limit, page.offset)
        return DiffList([DiffOut(
            id=r.id, shadow_version=r.shadow_version, mode=r.mode, uapk_id=r.uapk_id, agent_id=r.agent_id,
            capability=r.capability, live_decision=r.live_decision, shadow_decision=r.shadow_decision,
            live_reasons=list(r.live_reasons or []), shadow_reasons=list(r.shadow_reasons or []),
            live_policy_version=r.live_policy_version, action=dict(r.action or {}),
            created_at=isoformat(r.created_at) or "") for r in rows], total)

    @post("/shadow/promote", status_code=HTTP_200_OK, summary="Make the shadow set the live one (a new version)",
          opt=NO_BODY)
    async def promote(self, request: Request[Any, Any, Any], org_id: str) -> ShadowPromoted:
        caller = await admit(request, org_id, "policies", "write")
        await declared_body(request)
        return ShadowPromoted(await repo.drop_shadow(_runtime(request), org_id, caller.actor, promote=True,
                                                    audit=_audit(request, caller, org_id)))

    @delete("/shadow", status_code=HTTP_200_OK, summary="Drop the shadow set")
    async def drop(self, request: Request[Any, Any, Any], org_id: str) -> ShadowPromoted:
        caller = await admit(request, org_id, "policies", "write")
        await repo.drop_shadow(_runtime(request), org_id, caller.actor, promote=False,
                              audit=_audit(request, caller, org_id))
        return ShadowPromoted(None)


ROUTES = [PoliciesController]
