"""Agent side of approvals: ``GET /api/v1/approvals/{approval_id}`` with the agent's API key.

The UAPK SDK polls this endpoint after an ESCALATE and compares ``status`` with the
uppercase strings ``"APPROVED"`` and ``"DENIED"``; once approved it retries the execute with
``override_token``. ``status`` stays APPROVED after the token was used; ``override_status``
(UNUSED, USED, EXPIRED) says what became of the token, which is shown only while UNUSED."""
from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get

from core.clock import utcnow
from core.errors import NotFound
from gateway.agent_auth import APPROVAL_POLL, GATEWAY_ROLES, agent_of
from gateway.approvals import ApprovalBase, override_spent, override_status, wire
from store import approvals as repo
from store.runtime import Runtime


class AgentApprovalOut(ApprovalBase):
    """What the agent sees: no approver identity or internal notes. ``override_token`` is set
    while APPROVED, unused and unexpired (``override_status`` UNUSED), and only for a key
    that may act as the agent."""

    decided_at: str | None
    reason: str | None
    override_token: str | None
    override_expires_at: str | None
    # null until APPROVED; then UNUSED (override_token is set), USED (consumed: never shown
    # again) or EXPIRED.
    override_status: str | None


_AGENT_FIELDS = AgentApprovalOut.__struct_fields__


@get("/api/v1/approvals/{approval_id:str}", tags=["gateway"], summary="An approval's status (and override token once approved)",
     guards=[APPROVAL_POLL])
async def agent_get_approval(request: Request[Any, Any, Any], approval_id: str) -> AgentApprovalOut:
    principal = agent_of(request)  # any role of the org; the key's own rate limit was spent
    org_id = principal.org_id or ""
    runtime: Runtime = request.app.state.runtime
    async with runtime.sessions() as session:
        approval = await repo.get(session, org_id, approval_id)
    if approval is None or (principal.uapk_ids is not None and approval.uapk_id not in principal.uapk_ids):
        raise NotFound()
    # The override token is a credential to act as the agent: only a key that may act as it
    # (a gateway role; its uapk_ids were checked above) gets it. Viewers, approvers and
    # policy authors of the org see the approval without it.
    may_act = principal.role in GATEWAY_ROLES
    now = utcnow()
    spent = False
    if repo.effective_status(approval, now) == repo.APPROVED:  # pending polls cost no Redis call
        gateway = getattr(request.app.state, "gateway", None)
        spent = await override_spent(runtime, approval, getattr(gateway, "used_overrides", None))
    status = override_status(approval, now, spent)
    # Once used (or expired) the token is never shown again, not even for the moment before
    # its use reaches the database.
    out = wire(approval, now, include_token=may_act and status == "UNUSED", runtime=runtime)
    out["override_status"] = status
    return msgspec.convert({k: out.get(k) for k in _AGENT_FIELDS}, AgentApprovalOut)


ROUTES = [agent_get_approval]
