"""Human side of approvals: list, read, approve (issues the override token), deny.
Thin: admitted by a guard before the body is read (api/admission.py); services/approvals.py
decides.

Reading needs ``approvals:read`` (viewer and above), deciding ``approvals:decide`` (approver
and above). Statuses are uppercase on the wire (PENDING, APPROVED, DENIED, EXPIRED); the
``status`` filter accepts either case.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from api.admission import CALLER, admitted
from audit.changes import change_context
from core.clock import utcnow
from gateway.approvals import ApprovalBase, wire
from gateway.override_signer import override_signer
from httpkit.auth import Caller
from httpkit.pagination import Page, pagination
from services import approvals as service
from store.models import Approval
from store.runtime import Runtime


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class ApproveRequest(Strict):
    notes: str | None = None
    expires_in_seconds: int | None = None


class DenyRequest(Strict):
    reason: str | None = None
    notes: str | None = None


class ApprovalOut(ApprovalBase):
    decided_by: str | None = None
    decided_at: str | None = None
    notes: str | None = None
    reason: str | None = None
    override_expires_at: str | None = None
    override_used_at: str | None = None


class ApprovalDecided(ApprovalOut):
    override_token: str | None = None


class ApprovalList(msgspec.Struct):
    items: list[ApprovalOut]
    total: int


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _out(approval: Approval, now: datetime) -> ApprovalOut:
    data = wire(approval, now, include_token=False)
    return msgspec.convert(data, ApprovalOut)


def _decided(approval: Approval, now: datetime, runtime: Runtime) -> ApprovalDecided:
    return msgspec.convert(wire(approval, now, include_token=True, runtime=runtime), ApprovalDecided)


class ApprovalController(Controller):
    path = "/api/v1/orgs/{org_id:str}/approvals"
    tags = ["approvals"]
    dependencies = CALLER

    @get("/", summary="List approvals (filters: status, uapk_id)", dependencies=pagination(),
         guards=[admitted("approvals", "read")])
    async def list_approvals(
        self, request: Request[Any, Any, Any], org_id: str, page: Page, caller: Caller,
        status: Annotated[str | None, Parameter(description="PENDING, APPROVED, DENIED or EXPIRED (either case).")] = None,
        uapk_id: Annotated[str | None, Parameter(min_length=1, max_length=63, description="Only this agent's.")] = None,
    ) -> ApprovalList:
        now = utcnow()
        rows, total = await service.list_approvals(_runtime(request), org_id, caller.principal, status=status,
                                                   uapk_id=uapk_id, limit=page.limit, offset=page.offset, now=now)
        return ApprovalList(items=[_out(a, now) for a in rows], total=total)

    @get("/{approval_id:str}", summary="One approval", guards=[admitted("approvals", "read")])
    async def get_approval(self, request: Request[Any, Any, Any], org_id: str, approval_id: str, caller: Caller) -> ApprovalOut:
        return _out(await service.visible(_runtime(request), org_id, approval_id, caller.principal), utcnow())

    @post("/{approval_id:str}/approve", status_code=HTTP_200_OK, summary="Approve: issues a single-use override token",
          guards=[admitted("approvals", "decide")])
    async def approve(
        self, request: Request[Any, Any, Any], org_id: str, approval_id: str, caller: Caller,
        data: ApproveRequest | None = None,
    ) -> ApprovalDecided:
        body = data or ApproveRequest()
        runtime = _runtime(request)
        approval = await service.approve(runtime, change_context(request, caller), caller.principal, org_id, approval_id,
                                         notes=body.notes, expires_in_seconds=body.expires_in_seconds,
                                         sign=override_signer(runtime))
        return _decided(approval, utcnow(), runtime)

    @post("/{approval_id:str}/deny", status_code=HTTP_200_OK, summary="Deny an escalated action",
          guards=[admitted("approvals", "decide")])
    async def deny(
        self, request: Request[Any, Any, Any], org_id: str, approval_id: str, caller: Caller,
        data: DenyRequest | None = None,
    ) -> ApprovalOut:
        body = data or DenyRequest()
        approval = await service.deny(_runtime(request), change_context(request, caller), caller.principal, org_id,
                                      approval_id, reason=body.reason, notes=body.notes)
        return _out(approval, utcnow())


ROUTES = [ApprovalController]
