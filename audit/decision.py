"""The audit event of one gateway decision (evaluate or execute, any outcome)."""
from __future__ import annotations

from typing import Any

from audit.event import build_event


def build_decision_event(
    decision: Any,
    *,
    org_id: str,
    kind: str,
    req: Any,
    actor: str | None,
    request_id: str | None,
    interaction_id: str | None,
    include_params: bool = False,
    approval_id: str | None = None,
) -> dict[str, Any]:
    """The event of one gateway decision (``gateway.decision.Decision``) for ``req``
    (``GatewayActionRequest``); ``kind`` is ``gateway.evaluate`` or ``gateway.execute``.

    A dict of the event's fields: the decision recorder amends it (its event id, the agent's
    limits, the outcome it hands to the quota script) before handing it over."""
    action = getattr(req, "action", None)
    params = getattr(action, "params", None)
    details: dict[str, Any] = {}
    if getattr(action, "amount", None) is not None:
        details["amount"] = getattr(action, "amount", None)
    if getattr(action, "currency", None) is not None:
        details["currency"] = getattr(action, "currency", None)
    if approval_id:
        details["approval_id"] = approval_id
    override = getattr(decision, "override", None)
    if override is not None and getattr(override, "approval_id", None):
        details["override_approval_id"] = override.approval_id
    return build_event(
        org_id=org_id,
        kind=kind,
        actor=actor,
        uapk_id=getattr(req, "uapk_id", None),
        agent_id=getattr(req, "agent_id", None),
        capability=getattr(decision, "capability", None),
        decision=getattr(decision, "decision", None),
        reasons=getattr(decision, "reasons", None) or [],
        policy_version=getattr(decision, "policy_version", None),
        request_id=request_id,
        interaction_id=interaction_id,
        params=params if params is not None else {},
        has_params=True,
        include_params=include_params,
        details=details or None,
        created_at=getattr(decision, "timestamp", None),
    ).to_dict()
