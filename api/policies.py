"""Policies API: org policy rules, versions and rollback, explain, test, shadow deployments.

Roles: ``policies:read`` (viewer and up) lists, explains and tests; ``policies:write``
(policy_author, admin, owner) changes rules. Every change publishes a new policy version
(store.policy_rules) that every gateway process applies within a second. docs/policies.md.

Thin: admitted by a guard before the body is read (api/admission.py); services/policies.py
validates and changes, api/policy_wire.py holds the wire types.
"""
from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import policy_wire as wire
from api.admission import CALLER, admitted
from api.policy_wire import (
    DiffList,
    Explained,
    PolicyTestRequest,
    RuleIn,
    RuleSet,
    RuleWritten,
    ShadowDetail,
    ShadowPromoted,
    ShadowRequest,
    TestRun,
    VersionDetail,
    VersionList,
    VersionWritten,
)
from audit.changes import ChangeContext, change_context
from core.errors import NotFound
from gateway import policy_eval
from gateway.schemas import GatewayActionRequest
from httpkit.auth import Caller
from httpkit.openapi import NoBody, declared_body, request_body
from httpkit.pagination import Page, pagination
from policies.compile import CompiledOrg
from policies.rules import parse_rules
from services import policies as service
from store.runtime import Runtime

READ = admitted("policies", "read")
WRITE = admitted("policies", "write")


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _ctx(request: Request[Any, Any, Any], caller: Caller) -> ChangeContext:
    return change_context(request, caller, caller.org_id)


async def _compiled(request: Request[Any, Any, Any], org_id: str) -> CompiledOrg:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:  # pragma: no cover - the composed app always has one
        raise NotFound("The gateway is not running in this process.")
    return await gateway.state.get(org_id)  # type: ignore[no-any-return]


class PoliciesController(Controller):
    path = "/api/v1/orgs/{org_id:str}/policies"
    tags = ["policies"]
    dependencies = CALLER

    # --- rules ---------------------------------------------------------------------------
    @get("/rules", summary="The live rule set and its version", guards=[READ])
    async def list_rules(self, request: Request[Any, Any, Any], org_id: str) -> RuleSet:
        version, rules = await service.live_rules(_runtime(request), org_id)
        return RuleSet(version, [r.to_dict() for r in rules])

    # Rule bodies are read as any JSON value: policies.rules names every problem at once and
    # also takes conditions in their CSV string form.
    @post("/rules", status_code=HTTP_201_CREATED, summary="Add a rule (a new policy version)",
          opt=request_body(RuleIn, decode=False), guards=[WRITE])
    async def add_rule(self, request: Request[Any, Any, Any], org_id: str, caller: Caller) -> RuleWritten:
        version, rule = await service.add_rule(_runtime(request), _ctx(request, caller), caller.actor, org_id,
                                               await declared_body(request))
        return RuleWritten(version, rule.to_dict())

    @delete("/rules/{rule_id:str}", status_code=HTTP_200_OK, summary="Delete a rule (a new policy version)",
            guards=[WRITE])
    async def delete_rule(self, request: Request[Any, Any, Any], org_id: str, rule_id: str, caller: Caller) -> VersionWritten:
        return VersionWritten(await service.delete_rule(_runtime(request), _ctx(request, caller), caller.actor, org_id,
                                                        rule_id))

    # --- versions ------------------------------------------------------------------------
    @get("/versions", summary="Policy versions, newest first", dependencies=pagination(), guards=[READ])
    async def list_versions(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> VersionList:
        items, total = await service.versions(_runtime(request), org_id, page.limit, page.offset)
        return VersionList([wire.version_summary(v) for v in items], total)

    @get("/versions/{version:int}", summary="One policy version: the whole rule set", guards=[READ])
    async def get_version(self, request: Request[Any, Any, Any], org_id: str, version: int) -> VersionDetail:
        return wire.version_detail(await service.version(_runtime(request), org_id, version))

    @post("/versions/{version:int}/rollback", status_code=HTTP_201_CREATED,
          summary="Publish a new version equal to an older one", guards=[WRITE])
    async def rollback(self, request: Request[Any, Any, Any], org_id: str, version: int, caller: Caller,
                       data: NoBody | None = None) -> VersionDetail:
        return wire.version_detail(await service.rollback(_runtime(request), _ctx(request, caller), caller.actor,
                                                          org_id, version))

    # --- explain and test ----------------------------------------------------------------
    # Declared, not a typed ``data:``: a required typed body that is empty would be refused in
    # Litestar's words ("'data'") where this route says "A JSON object is required.".
    @post("/explain", status_code=HTTP_200_OK, summary="Decision, trace and matching rules (nothing spent)",
          opt=request_body(GatewayActionRequest), guards=[READ])
    async def explain(self, request: Request[Any, Any, Any], org_id: str) -> Explained:
        req: GatewayActionRequest = await declared_body(request)
        compiled = await _compiled(request, org_id)
        d = await request.app.state.gateway.explain(req, compiled)
        return wire.explained(d, policy_eval.explain_rules(compiled, d, req))

    @post("/test", status_code=HTTP_200_OK, summary="Run cases against a candidate rule set (live untouched)",
          opt=request_body(PolicyTestRequest, decode=False), guards=[READ])
    async def test_rules(self, request: Request[Any, Any, Any], org_id: str) -> TestRun:
        body = service.object_body(await declared_body(request), ("rules", "cases"))
        rules = parse_rules(body["rules"], "rules") if body.get("rules") is not None else None
        cases = policy_eval.parse_cases(body.get("cases"), "cases")
        compiled = policy_eval.with_candidate(await _compiled(request, org_id), rules)
        tokens = getattr(request.app.state, "tokens", None)
        return wire.test_run(await policy_eval.run_cases(compiled, cases, cap_verifier=getattr(tokens, "verifier", None)))

    # --- shadow --------------------------------------------------------------------------
    @post("/shadow", status_code=HTTP_201_CREATED, summary="Deploy a candidate rule set as shadow",
          opt=request_body(ShadowRequest, decode=False), guards=[WRITE])
    async def deploy_shadow(self, request: Request[Any, Any, Any], org_id: str, caller: Caller) -> ShadowDetail:
        info = await service.deploy_shadow(_runtime(request), _ctx(request, caller), caller.actor, org_id,
                                           await declared_body(request))
        return wire.shadow_detail(info)

    @get("/shadow", summary="The deployed shadow rule set", guards=[READ])
    async def get_shadow(self, request: Request[Any, Any, Any], org_id: str) -> ShadowDetail:
        return wire.shadow_detail(await service.shadow(_runtime(request), org_id))

    @get("/shadow/diffs", summary="Requests the shadow set decided differently, newest first",
         dependencies=pagination(), guards=[READ])
    async def diffs(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> DiffList:
        gateway = getattr(request.app.state, "gateway", None)
        if gateway is not None:
            await gateway.shadow.flush()  # this process's buffer; others flush on their own
        rows, total = await service.diffs(_runtime(request), org_id, page.limit, page.offset)
        return DiffList([wire.diff_out(r) for r in rows], total)

    @post("/shadow/promote", status_code=HTTP_200_OK, summary="Make the shadow set the live one (a new version)",
          guards=[WRITE])
    async def promote(self, request: Request[Any, Any, Any], org_id: str, caller: Caller,
                      data: NoBody | None = None) -> ShadowPromoted:
        return ShadowPromoted(await service.drop_shadow(_runtime(request), _ctx(request, caller), caller.actor, org_id,
                                                        promote=True))

    @delete("/shadow", status_code=HTTP_200_OK, summary="Drop the shadow set", guards=[WRITE])
    async def drop(self, request: Request[Any, Any, Any], org_id: str, caller: Caller) -> ShadowPromoted:
        await service.drop_shadow(_runtime(request), _ctx(request, caller), caller.actor, org_id, promote=False)
        return ShadowPromoted(None)


ROUTES = [PoliciesController]
