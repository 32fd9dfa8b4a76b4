"""Management changes: who made one, and handing its event to the sink inside its transaction.

Every management change (manifest transition, approval decision, key, member, token, policy...)
records its event *before* its transaction commits: a change whose event cannot be handed over
(``ServiceUnavailable``) is rolled back, so nothing takes effect unaudited.

Nothing here needs HTTP: a :class:`ChangeContext` says where events go and who acts; the
controllers make one from their request with :func:`change_context` (duck-typed: anything
with ``app.state.audit`` and a Litestar-style ``scope``), services take it as an argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit.event import build_event
from audit.sink import Sink
from core.errors import ServiceUnavailable


def actor_of(who: Any) -> str | None:
    """``api_key:<id> (<name>)`` or ``user:<email>`` from a Principal or Caller (httpkit.auth).

    Every other record (policy version author, manifest events, approvals' decided_by, tokens'
    issued_by) names a key by its name: the audit trail gives the id, which is unique and
    stays, and that name, so its events and those records can be matched."""
    principal = getattr(who, "principal", who)
    if principal is None:
        return None
    if getattr(principal, "kind", None) == "api_key":
        name = getattr(principal, "actor", None)
        return f"api_key:{principal.key_id} ({name})" if name else f"api_key:{principal.key_id}"
    return f"user:{getattr(principal, 'actor', None) or getattr(principal, 'user_id', '')}"


def request_id_of(request: Any) -> str | None:
    """The request's ``X-Request-ID`` as the request-id middleware stored it, if any."""
    state = getattr(request, "scope", {}).get("state", {})
    rid = state.get("request_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else None


def org_of(caller: Any) -> str | None:
    org = getattr(caller, "org_id", None) or getattr(getattr(caller, "principal", None), "org_id", None)
    return str(org) if org else None


@dataclass(frozen=True)
class ChangeContext:
    """Where a change's events go (``sink``; None: the audit trail is not running) and who made
    it, in which organization, under which request id."""

    sink: Sink | None
    actor: str | None
    org_id: str | None = None
    request_id: str | None = None

    async def record(self, kind: str, *, org_id: str | None = None, details: dict[str, Any] | None = None,
                     **fields: Any) -> None:
        """Hand one change's event over; call it inside the change's transaction, before the
        commit. Raises ``ServiceUnavailable`` when it cannot be (then do not commit)."""
        if self.sink is None:
            raise ServiceUnavailable("The audit trail is not running; nothing was done.")
        await self.sink.record(build_event(
            org_id=str(org_id or self.org_id), kind=kind, actor=self.actor, request_id=self.request_id,
            details=details, **fields,
        ))


    async def hook(self, kind: str, details: dict[str, Any] | None, session: Any, **fields: Any) -> None:
        """The audit hook of ``store.unit_of_work`` (``hook(kind, details, session, **fields)``):
        the unit of work calls it inside its transaction. ``session`` is not needed: the sink
        hands the event over before the commit either way."""
        await self.record(kind, details=details, **fields)


def change_context(request: Any, caller: Any, org_id: str | None = None) -> ChangeContext:
    """The context of a change made by ``caller`` (Principal or Caller) in ``request``."""
    return ChangeContext(
        sink=getattr(request.app.state, "audit", None), actor=actor_of(caller),
        org_id=org_id or org_of(caller), request_id=request_id_of(request),
    )


async def record_change(
    request: Any, caller: Any, kind: str, *, org_id: str | None = None, details: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """One management change by ``caller`` in ``request``: call it inside the change's
    transaction, before the commit, so that a change that cannot be audited is not made
    (``ServiceUnavailable``)."""
    await change_context(request, caller, org_id).record(kind, details=details, **fields)
