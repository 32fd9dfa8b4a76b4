"""Manifests API: register, list, get, approve/reject/suspend/reactivate/revoke, look up by
UAPK id, validate and history.

Thin: each route is admitted by a guard (``api.admission``: before the body is read), takes a
typed body, calls services/manifests.py and shapes the answer with api/manifest_wire.py.
"""
from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import manifest_wire as wire
from api.admission import CALLER, admitted, path_id
from api.manifest_wire import (
    MANIFEST_BODY,
    Approved,
    History,
    ManifestApproveRequest,
    ManifestDetail,
    ManifestList,
    ManifestStatus,
    NotesRequest,
    Reactivated,
    ReasonRequest,
    Registered,
    Rejected,
    Revoked,
    Suspended,
    ValidateResult,
)
from audit.changes import change_context
from httpkit.auth import Caller
from httpkit.openapi import declared_body
from httpkit.pagination import Page, pagination
from policies import manifest as doc_rules
from services import manifests as service
from store.runtime import Runtime

LIST_DEFAULT_LIMIT = 50
KNOWN_ID = path_id("manifest_id", service.MANIFEST_ID)


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def _transition(request: Request[Any, Any, Any], caller: Caller, manifest_id: str, action: str,
                      **fields: Any) -> Any:
    return await service.transition(_runtime(request), change_context(request, caller), caller.actor,
                                    caller.org_id, manifest_id, action, **fields)


class ManifestController(Controller):
    path = "/api/v1/orgs/{org_id:str}/manifests"
    tags = ["manifests"]
    dependencies = CALLER

    @post("/", status_code=HTTP_201_CREATED, summary="Register a manifest (the body is the manifest document)",
          opt=MANIFEST_BODY, guards=[admitted("manifests", "register", tier="heavy")])
    async def register(self, request: Request[Any, Any, Any], org_id: str, caller: Caller) -> Registered:
        # Any JSON value: check_document names every problem at once, which a typed body cannot.
        document = await declared_body(request)
        m = await service.register(_runtime(request), change_context(request, caller), caller.actor, org_id, document)
        return wire.registered(m)

    @post("/validate", status_code=HTTP_200_OK, summary="Validate a manifest without registering it",
          opt=MANIFEST_BODY, guards=[admitted("manifests", "register", tier="heavy")])
    async def validate(self, request: Request[Any, Any, Any], org_id: str) -> ValidateResult:
        return wire.validated(service.validate(await declared_body(request)))

    @get("/", summary="List manifests (filters: status, team; limit/offset)",
         dependencies=pagination(LIST_DEFAULT_LIMIT), guards=[admitted("manifests", "read")])
    async def list_manifests(
        self, request: Request[Any, Any, Any], org_id: str, page: Page,
        status: Annotated[ManifestStatus | None, Parameter(description="Only manifests in this state.")] = None,
        team: Annotated[str | None, Parameter(min_length=1, max_length=doc_rules.MAX_TEXT,
                                              description="Exact match on agent.team.")] = None,
    ) -> ManifestList:
        rows, total = await service.list_manifests(_runtime(request), org_id, status=status, team=team,
                                                   limit=page.limit, offset=page.offset)
        return wire.listed(rows, total)

    @get("/by-uapk/{uapk_id:str}", summary="The agent's active manifest, else its newest",
         guards=[admitted("manifests", "read")])
    async def by_uapk(self, request: Request[Any, Any, Any], org_id: str, uapk_id: str) -> ManifestDetail:
        runtime = _runtime(request)
        return wire.detail(await service.by_uapk(runtime, org_id, uapk_id), runtime.settings)

    @get("/{manifest_id:str}", summary="Full manifest details", guards=[admitted("manifests", "read")])
    async def get_manifest(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> ManifestDetail:
        runtime = _runtime(request)
        return wire.detail(await service.get(runtime, org_id, manifest_id), runtime.settings)

    @get("/{manifest_id:str}/history", summary="Every version of this manifest's agent, newest first",
         guards=[admitted("manifests", "read")])
    async def history(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> History:
        return wire.history(*await service.history(_runtime(request), org_id, manifest_id))

    # --- transitions: one service function; the routes differ in role, tier and body ---------
    @post("/{manifest_id:str}/approve", status_code=HTTP_200_OK, summary="Approve a pending manifest",
          guards=[admitted("manifests", "approve"), KNOWN_ID])
    async def approve(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str, caller: Caller,
                      data: ManifestApproveRequest | None = None) -> Approved:
        body = data or ManifestApproveRequest()
        return wire.approved(await _transition(request, caller, manifest_id, "approve", notes=body.notes,
                                               approved_capabilities=body.approved_capabilities))

    @post("/{manifest_id:str}/reject", status_code=HTTP_200_OK, summary="Reject a pending manifest",
          guards=[admitted("manifests", "reject"), KNOWN_ID])
    async def reject(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str, caller: Caller,
                     data: ReasonRequest | None = None) -> Rejected:
        body = data or ReasonRequest()
        result = await _transition(request, caller, manifest_id, "reject", reason=body.reason, notes=body.notes)
        return wire.rejected(result.manifest)

    @post("/{manifest_id:str}/suspend", status_code=HTTP_200_OK, summary="Temporarily suspend an active manifest",
          guards=[admitted("manifests", "suspend", tier="emergency"), KNOWN_ID])
    async def suspend(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str, caller: Caller,
                      data: ReasonRequest | None = None) -> Suspended:
        body = data or ReasonRequest()
        result = await _transition(request, caller, manifest_id, "suspend", reason=body.reason, notes=body.notes)
        return wire.suspended(result.manifest)

    @post("/{manifest_id:str}/reactivate", status_code=HTTP_200_OK, summary="Reactivate a suspended manifest",
          guards=[admitted("manifests", "reactivate"), KNOWN_ID])
    async def reactivate(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str, caller: Caller,
                         data: NotesRequest | None = None) -> Reactivated:
        body = data or NotesRequest()
        result = await _transition(request, caller, manifest_id, "reactivate", notes=body.notes)
        return wire.reactivated(result.manifest)

    @post("/{manifest_id:str}/revoke", status_code=HTTP_200_OK, summary="Permanently revoke a manifest",
          guards=[admitted("manifests", "revoke", tier="emergency"), KNOWN_ID])
    async def revoke(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str, caller: Caller,
                     data: ReasonRequest | None = None) -> Revoked:
        body = data or ReasonRequest()
        result = await _transition(request, caller, manifest_id, "revoke", reason=body.reason, notes=body.notes)
        return wire.revoked(result.manifest)


ROUTES = [ManifestController]
