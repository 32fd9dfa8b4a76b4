"""Approvals from the gateway's side: create one on an escalated execute, record the use of
its override token, and the approval's wire representation (shared by the agent endpoint and
the management API)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from core.clock import isoformat, utcnow
from core.errors import ServiceUnavailable
from gateway.decision import Decision, Reason, Step
from gateway.idsets import ExpiringIds
from gateway.overrides import action_hash, bound_action, issue_override
from store import approvals as repo
from store.bus_messages import OverrideConsumed
from store.changes import announce
from store.models import Approval
from store.runtime import Runtime

log = logging.getLogger("bastion.approvals")


def hash_for(
    org_id: str, uapk_id: str, agent_id: str, capability: str, action: dict[str, Any],
    counterparty: dict[str, Any] | None = None,
) -> str:
    """The approval's ``action_hash``: what its override token will be bound to."""
    return action_hash(
        org_id=org_id, uapk_id=uapk_id, agent_id=agent_id, capability=capability,
        **bound_action(action, counterparty),
    )


def _digest(org_id: str, uapk_id: str, agent_id: str, capability: str, action: dict[str, Any],
            counterparty: dict[str, Any] | None) -> str:
    try:
        return hash_for(org_id, uapk_id, agent_id, capability, action, counterparty)
    except ValueError:
        # e.g. an integer beyond 2**53 in params: no override can ever match it (approving it
        # answers 422), and it joins no other approval; still recorded for a human to deny.
        return ""


async def _insert(
    session: Any, runtime: Runtime, *, org_id: str, uapk_id: str, agent_id: str, capability: str,
    action: dict[str, Any], counterparty: dict[str, Any] | None, digest: str, reasons: list[dict[str, Any]],
    interaction_id: str, key_id: str | None, now: datetime,
) -> str:
    row = await repo.insert(
        session,
        org_id=org_id,
        uapk_id=uapk_id,
        agent_id=agent_id,
        capability=capability,
        action=action,
        counterparty=counterparty,
        action_hash=digest,
        reasons=reasons,
        interaction_id=interaction_id,
        requested_by_key=key_id,
        created_at=now,
        expires_at=now + timedelta(seconds=runtime.settings.approval_ttl_seconds),
    )
    return row.id


async def create_approval(
    runtime: Runtime,
    *,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    capability: str,
    action: dict[str, Any],
    reasons: list[dict[str, Any]],
    interaction_id: str,
    key_id: str | None,
    counterparty: dict[str, Any] | None = None,
) -> str:
    """Insert a PENDING approval, unconditionally; returns its id. It expires
    ``Settings.approval_ttl_seconds`` (default 24 h) after creation. The gateway uses
    :func:`escalate` (which joins and limits); this is the bare insert."""
    now = utcnow()
    digest = _digest(org_id, uapk_id, agent_id, capability, action, counterparty)
    async with runtime.sessions() as session, session.begin():
        return await _insert(
            session, runtime, org_id=org_id, uapk_id=uapk_id, agent_id=agent_id, capability=capability,
            action=action, counterparty=counterparty, digest=digest, reasons=reasons,
            interaction_id=interaction_id, key_id=key_id, now=now,
        )


TOO_MANY_PENDING = "too_many_pending_approvals"


def final_before_approval(d: Decision) -> bool:
    """Whether an execute's settled outcome is final before the approval step: an escalation
    is not (:func:`escalate` may still turn it into a deny), so its event does not ride along
    with the quota call; :func:`escalate` records it, with the final outcome, before its
    transaction commits. Every other outcome is final."""
    return d.decision != "escalate"


class AgentLocks:
    """In-process locks, one per agent (org, uapk_id), held by the Gateway: concurrent
    escalations of one agent in this process queue here first (cheap, and no pooled connection
    waits on the database lock), then take the database lock for other processes
    (store.approvals.lock_agent)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def of(self, org_id: str, uapk_id: str) -> asyncio.Lock:
        lock = self._locks.get((org_id, uapk_id))
        if lock is None:
            lock = self._locks[(org_id, uapk_id)] = asyncio.Lock()
        return lock


async def escalate(
    runtime: Runtime,
    d: Any,
    req: Any,
    *,
    org_id: str,
    interaction_id: str,
    key_id: str | None,
    record: Callable[[Any], Awaitable[None]],
    locks: AgentLocks,
) -> str | None:
    """The approval of an escalated execute (``d``: the settled Decision, ``req``: the
    GatewayActionRequest). Returns its id, or ``None`` after turning ``d`` into a deny.

    * The identical action (same action hash: same agent, same bound fields) already waiting
      for a human: that approval's id (the repeat joins it; nothing new for approvers).
    * Otherwise a new approval, unless the agent (org, uapk_id) already holds as many pending
      approvals as it could still use: its remaining daily quota, and at most
      ``Settings.max_pending_approvals``. Then ``d`` becomes ``deny``,
      ``too_many_pending_approvals``: escalations spend no quota, so without this bound an
      agent could flood its approvers.

    One transaction, serialized per agent (in-process lock + ``repo.lock_agent``), so
    concurrent escalations can neither exceed the bound nor duplicate an action. ``record``
    (the decision's audit hand-over) is awaited with the final outcome before the commit:
    an outcome that cannot be audited is not kept (it raises, 503)."""
    uapk_id, agent_id = req.uapk_id, req.agent_id
    action = msgspec.to_builtins(req.action)
    counterparty = msgspec.to_builtins(req.counterparty) if req.counterparty is not None else None
    digest = _digest(org_id, uapk_id, agent_id, d.capability, action, counterparty)
    cap = runtime.settings.max_pending_approvals
    remaining = d.quota.day_remaining if d.quota is not None else cap
    limit = min(cap, remaining)
    async with locks.of(org_id, uapk_id):
        async with runtime.sessions() as session, session.begin():
            await repo.lock_agent(session, org_id, uapk_id)
            now = utcnow()
            existing = await repo.find_pending(session, org_id, uapk_id, agent_id, digest, now) if digest else None
            if existing is not None:
                await record(d)
                return existing.id
            pending = await repo.count_pending(session, org_id, uapk_id, now)
            if pending >= limit:
                why = (f"its remaining daily quota ({remaining})" if remaining < cap
                       else f"the limit of {cap} (BASTION_MAX_PENDING_APPROVALS)")
                reason = Reason(
                    TOO_MANY_PENDING,
                    f"'{uapk_id}' already has {pending} approvals waiting for a human, as many as it may hold: "
                    f"{why}. Wait for a decision, or repeat an action that is already waiting.",
                    {"capability": d.capability, "pending": pending, "limit": limit,
                     "max_pending_approvals": cap, "day_remaining": remaining},
                )
                d.decision, d.reasons = "deny", [reason]
                d.trace.append(Step("pending_approvals", "fail", reason.message, f"max_pending_approvals:{limit}"))
                await record(d)
                return None
            approval_id = await _insert(
                session, runtime, org_id=org_id, uapk_id=uapk_id, agent_id=agent_id, capability=d.capability,
                action=action, counterparty=counterparty, digest=digest, reasons=[r.as_dict() for r in d.reasons],
                interaction_id=interaction_id, key_id=key_id, now=now,
            )
            await record(d)
    return approval_id


async def on_override_consumed(
    runtime: Runtime, org_id: str, approval_id: str, jti: str, expires_at: float | None = None
) -> None:
    """Record ``override_used_at`` once the gateway's single-use marker accepted the token,
    and tell every process (``override_consumed``) so their ``UsedOverrides`` refuse it even
    if Redis later loses its markers.

    Called off the response path; a failure here is logged, never raised (the Redis marker
    and this process's own set already refuse a second use)."""
    try:
        async with runtime.sessions() as session, session.begin():
            await repo.mark_override_used(session, org_id, approval_id, jti, utcnow())
        if expires_at is not None:
            await announce(runtime.bus, OverrideConsumed(org_id=org_id, jti=jti, exp=expires_at))
    except Exception:  # pragma: no cover - logged for operators; the execute already happened
        log.exception("could not record override use", extra={"approval_id": approval_id})


class ApprovalBase(msgspec.Struct):
    """The fields every view of an approval shows (the approvers' and the agent's)."""

    approval_id: str
    status: str  # PENDING, APPROVED, DENIED, EXPIRED
    uapk_id: str
    agent_id: str
    capability: str
    action: dict[str, Any]
    counterparty: dict[str, Any] | None  # part of what the override token is bound to
    reasons: list[dict[str, Any]]
    interaction_id: str
    created_at: str
    expires_at: str


class UsedOverrides(ExpiringIds):
    """Spent override-token ids, until they expire (see gateway.idsets)."""

    def __init__(self) -> None:
        super().__init__(OverrideConsumed, repo.overrides_used_since)


async def override_spent(runtime: Runtime, approval: Approval, used: Any = None) -> bool:
    """Has the approval's override token been used? Exact from the moment the gateway spent
    it, not only once ``override_used_at`` is written (that happens off the response path):

    * ``override_used_at`` in the database;
    * ``used`` (the gateway's ``UsedOverrides``): the spending process adds the jti before it
      answers, other processes learn it from the change bus and the database catch-up;
    * with Redis, the single-use marker itself (one ``EXISTS``), which the quota script sets
      in the very step that spends the token, whichever process spent it.

    Raises ``ServiceUnavailable`` when Redis cannot answer: the token is not shown then."""
    if approval.override_used_at is not None:
        return True
    jti = approval.override_jti
    if jti is None:
        return False
    if used is not None and jti in used:
        return True
    if runtime.redis is None:
        return False
    from store.quotas import override_key

    try:
        return bool(await runtime.redis.exists(override_key(approval.org_id, approval.uapk_id, jti)))
    except Exception as exc:  # redis errors, timeouts, OSError: fail closed (no token shown)
        raise ServiceUnavailable(
            f"Cannot tell whether the override token was used ({type(exc).__name__}); retry shortly."
        ) from exc


def override_status(approval: Approval, now: datetime, spent: bool) -> str | None:
    """``UNUSED`` (the token can be used), ``USED``, ``EXPIRED``; ``None`` unless APPROVED."""
    if repo.effective_status(approval, now) != repo.APPROVED:
        return None
    if spent:
        return "USED"
    if approval.override_expires_at is not None and approval.override_expires_at <= now:
        return "EXPIRED"
    return "UNUSED"


def override_token_of(approval: Approval, runtime: Runtime) -> str | None:
    """Re-create the approval's override token. It is never stored (a bearer secret at rest
    is a secret to leak): approve signs it with ``iat = decided_at`` and a recorded ``jti``
    and expiry, and Ed25519 being deterministic, signing the same claims again gives the same
    token (or, after a key rotation, an equally valid one with the same single-use ``jti``)."""
    if approval.override_jti is None or approval.override_expires_at is None or approval.decided_at is None:
        return None
    iat = int(approval.decided_at.timestamp())
    ttl = int(approval.override_expires_at.timestamp()) - iat
    if ttl <= 0:
        return None
    try:
        token, _, _ = issue_override(
            runtime.keys, runtime.settings,
            approval_id=approval.id, org_id=approval.org_id, uapk_id=approval.uapk_id, agent_id=approval.agent_id,
            capability=approval.capability, **bound_action(approval.action or {}, approval.counterparty),
            ttl_seconds=ttl, now=iat, jti=approval.override_jti,
        )
    except ValueError:
        return None
    return token


def wire(approval: Approval, now: datetime, *, include_token: bool, runtime: Runtime | None = None) -> dict[str, Any]:
    """The approval as the API shows it (uppercase status; EXPIRED when pending past expiry).

    ``include_token``: the override token is shown to the agent (and in the approve
    response), only while the approval is APPROVED and the token unused (needs ``runtime``
    to re-sign it)."""
    status = repo.effective_status(approval, now)
    out: dict[str, Any] = {
        "approval_id": approval.id,
        "status": status,
        "uapk_id": approval.uapk_id,
        "agent_id": approval.agent_id,
        "capability": approval.capability,
        "action": approval.action,
        "counterparty": approval.counterparty,
        "reasons": approval.reasons,
        "interaction_id": approval.interaction_id,
        "created_at": isoformat(approval.created_at),
        "expires_at": isoformat(approval.expires_at),
        "decided_by": approval.decided_by,
        "decided_at": isoformat(approval.decided_at),
        "notes": approval.notes,
        "reason": approval.reason,
        "override_expires_at": isoformat(approval.override_expires_at),
        "override_used_at": isoformat(approval.override_used_at),
    }
    if include_token:
        usable = status == repo.APPROVED and approval.override_used_at is None
        out["override_token"] = override_token_of(approval, runtime) if usable and runtime is not None else None
    return out
