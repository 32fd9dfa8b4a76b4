"""Human side of approvals: list, read, approve (issues the override token), deny.

Reading needs ``approvals:read`` (viewer and above), deciding ``approvals:decide`` (approver
and above). Statuses are uppercase on the wire (PENDING, APPROVED, DENIED, EXPIRED); the
``status`` filter accepts either case.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from api.validation import Checker
from core.clock import isoformat, utcnow
from core.errors import Conflict, NotFound, PermissionDenied, Unprocessable
from core.text import text_issue
from gateway.approvals import ApprovalBase, wire
from gateway.overrides import bound_action, issue_override
from httpkit.auth import Caller, admit
from httpkit.pagination import Page, pagination
from store import approvals as repo
from store.models import Approval
from store.runtime import Runtime

MIN_OVERRIDE_TTL = 10
MAX_OVERRIDE_TTL = 86400
MAX_NOTES = 4000
MAX_REASON = 1000


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


def _free_text(c: Checker, field: str, value: str | None, max_len: int) -> None:
    if value is None:
        return
    if len(value) > max_len:
        c.add(field, f"Must be at most {max_len} characters.")
    elif (problem := text_issue(value, multiline=True)) is not None:  # the one text rule (core/text.py)
        c.add(field, problem)


def _not_pending(approval: Approval, now: datetime) -> Conflict:
    status = repo.effective_status(approval, now)
    if status == repo.EXPIRED:
        return Conflict("The approval has expired and can no longer be decided.")
    return Conflict(f"The approval is not pending (status {status}).")


async def _load(runtime: Runtime, org_id: str, approval_id: str) -> Approval:
    async with runtime.sessions() as session:
        approval = await repo.get(session, org_id, approval_id)
    if approval is None:
        raise NotFound()
    return approval


async def _four_eyes(runtime: Runtime, caller: Caller, approval: Approval) -> None:
    """The credential that requested the action, and the user who owns that credential (the
    user who created the API key), may not decide its approval: one person must not both
    ask for and grant an exception (``BASTION_APPROVAL_FOUR_EYES``, on by default)."""
    key_id = approval.requested_by_key
    if not runtime.settings.approval_four_eyes or key_id is None:
        return
    principal = caller.principal
    if principal.kind == "api_key" and principal.key_id == key_id:
        raise PermissionDenied(
            "Four-eyes rule: the API key that requested this action may not decide its approval; "
            "another approver must."
        )
    if principal.kind == "user":
        async with runtime.sessions() as session:
            owner = await repo.key_owner(session, approval.org_id, key_id)
        if owner is not None and owner.lower() == principal.actor.lower():
            raise PermissionDenied(
                "Four-eyes rule: you own the API key that requested this action, so you may not decide "
                "its approval; another approver must."
            )


async def _audit(request: Request[Any, Any, Any], caller: Caller, kind: str, approval: Approval, extra: dict[str, Any]) -> None:
    from audit.changes import record_change

    details = {"approval_id": approval.id, **{k: v for k, v in extra.items() if v is not None}}
    await record_change(
        request, caller, kind, org_id=approval.org_id, uapk_id=approval.uapk_id, agent_id=approval.agent_id,
        capability=approval.capability, interaction_id=approval.interaction_id, details=details,
    )


class ApprovalController(Controller):
    path = "/api/v1/orgs/{org_id:str}/approvals"
    tags = ["approvals"]

    @get("/", summary="List approvals (filters: status, uapk_id)", dependencies=pagination())
    async def list_approvals(
        self, request: Request[Any, Any, Any], org_id: str, page: Page,
        status: Annotated[str | None, Parameter(description="PENDING, APPROVED, DENIED or EXPIRED (either case).")] = None,
        uapk_id: Annotated[str | None, Parameter(min_length=1, max_length=63, description="Only this agent's.")] = None,
    ) -> ApprovalList:
        caller = await admit(request, org_id, "approvals", "read")
        c = Checker()
        if status is not None:
            status = status.strip().upper()
            if status not in repo.STATUSES:
                c.add("status", f"Must be one of {', '.join(repo.STATUSES)} (either case).")
        c.check()
        now = utcnow()
        async with _runtime(request).sessions() as session:
            rows, total = await repo.list_for_org(
                session, org_id, now=now, status=status, uapk_id=uapk_id,
                uapk_ids=caller.principal.uapk_ids, limit=page.limit, offset=page.offset,
            )
        return ApprovalList(items=[_out(a, now) for a in rows], total=total)

    @get("/{approval_id:str}", summary="One approval")
    async def get_approval(self, request: Request[Any, Any, Any], org_id: str, approval_id: str) -> ApprovalOut:
        caller = await admit(request, org_id, "approvals", "read")
        approval = await _load(_runtime(request), org_id, approval_id)
        if caller.principal.uapk_ids is not None and approval.uapk_id not in caller.principal.uapk_ids:
            raise NotFound()
        return _out(approval, utcnow())

    @post("/{approval_id:str}/approve", status_code=HTTP_200_OK, summary="Approve: issues a single-use override token")
    async def approve(
        self, request: Request[Any, Any, Any], org_id: str, approval_id: str, data: ApproveRequest | None = None
    ) -> ApprovalDecided:
        caller = await admit(request, org_id, "approvals", "decide")
        body = data or ApproveRequest()
        runtime = _runtime(request)
        c = Checker()
        _free_text(c, "notes", body.notes, MAX_NOTES)
        ttl = runtime.settings.override_token_ttl_seconds if body.expires_in_seconds is None else body.expires_in_seconds
        if body.expires_in_seconds is not None and not MIN_OVERRIDE_TTL <= ttl <= MAX_OVERRIDE_TTL:
            c.add("expires_in_seconds", f"Must be between {MIN_OVERRIDE_TTL} and {MAX_OVERRIDE_TTL}.")
        c.check()
        approval = await _load(runtime, org_id, approval_id)
        if caller.principal.uapk_ids is not None and approval.uapk_id not in caller.principal.uapk_ids:
            raise NotFound()
        await _four_eyes(runtime, caller, approval)
        now = utcnow()
        if repo.effective_status(approval, now) != repo.PENDING:
            raise _not_pending(approval, now)
        try:
            token, jti, exp = issue_override(
                runtime.keys, runtime.settings,
                approval_id=approval.id, org_id=org_id, uapk_id=approval.uapk_id, agent_id=approval.agent_id,
                capability=approval.capability, **bound_action(approval.action or {}, approval.counterparty),
                ttl_seconds=ttl,
                now=int(now.timestamp()),  # iat = decided_at: the poll endpoint re-signs the same token
            )
        except ValueError:
            # e.g. an integer beyond 2**53 in params: RFC 8785 cannot canonicalise it, so no
            # override token could ever match this action. Deny it instead.
            raise Unprocessable(
                "This action cannot be bound to an override token (its params are not representable "
                "in canonical JSON); deny it instead."
            ) from None
        override_expires_at = datetime.fromtimestamp(exp, timezone.utc)
        async with runtime.sessions() as session, session.begin():
            won = await repo.decide(
                session, org_id, approval_id, to_status=repo.APPROVED, actor=caller.actor, now=now,
                notes=body.notes, override_jti=jti, override_expires_at=override_expires_at,
            )
            if won:  # audited inside the transaction: a decision that cannot be audited is not made
                await _audit(request, caller, "approval.approved", approval, {
                    "notes": body.notes, "override_jti": jti,
                    "override_expires_at": isoformat(override_expires_at),
                })
        approval = await _load(runtime, org_id, approval_id)
        if not won:
            raise _not_pending(approval, utcnow())
        return _decided(approval, utcnow(), runtime)

    @post("/{approval_id:str}/deny", status_code=HTTP_200_OK, summary="Deny an escalated action")
    async def deny(
        self, request: Request[Any, Any, Any], org_id: str, approval_id: str, data: DenyRequest | None = None
    ) -> ApprovalOut:
        caller = await admit(request, org_id, "approvals", "decide")
        body = data or DenyRequest()
        c = Checker()
        _free_text(c, "reason", body.reason, MAX_REASON)
        _free_text(c, "notes", body.notes, MAX_NOTES)
        c.check()
        runtime = _runtime(request)
        approval = await _load(runtime, org_id, approval_id)
        if caller.principal.uapk_ids is not None and approval.uapk_id not in caller.principal.uapk_ids:
            raise NotFound()
        await _four_eyes(runtime, caller, approval)
        now = utcnow()
        if repo.effective_status(approval, now) != repo.PENDING:
            raise _not_pending(approval, now)
        async with runtime.sessions() as session, session.begin():
            won = await repo.decide(
                session, org_id, approval_id, to_status=repo.DENIED, actor=caller.actor, now=now,
                notes=body.notes, reason=body.reason,
            )
            if won:
                await _audit(request, caller, "approval.denied", approval, {"notes": body.notes, "reason": body.reason})
        approval = await _load(runtime, org_id, approval_id)
        if not won:
            raise _not_pending(approval, utcnow())
        return _out(approval, utcnow())


ROUTES = [ApprovalController]
