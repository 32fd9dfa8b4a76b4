"""Approvals, the human side: read, approve (which issues the single-use override token) and
deny an escalated action.

A decision is one conditional update in one transaction with its audit event: a decision that
cannot be audited is not made, and of two approvers deciding at once exactly one wins (the
other gets 409). No HTTP here: errors are core.errors, the audit context is a ``ChangeContext``.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from audit.changes import ChangeContext
from core.clock import isoformat, utcnow
from core.errors import Conflict, FieldIssue, NotFound, PermissionDenied, Unprocessable, ValidationFailed
from core.text import text_issue
from store import approvals as repo
from store.models import Approval
from store.runtime import Runtime

MIN_OVERRIDE_TTL = 10
MAX_OVERRIDE_TTL = 86400
MAX_NOTES = 4000
MAX_REASON = 1000


# Signs the override token of an approval: (approval, ttl seconds, iat) -> (token, jti, exp).
# The token format is the gateway's (gateway/overrides.py), which sits above this layer: the
# controller passes its signer in. Raises ValueError when the action cannot be bound (params
# not representable in canonical JSON).
OverrideSigner = Callable[[Approval, int, int], tuple[str, str, int]]


class Decider(Protocol):
    """Who decides (``httpkit.auth.Principal``): an API key or a signed-in user."""

    @property
    def kind(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def key_id(self) -> str | None: ...
    @property
    def uapk_ids(self) -> tuple[str, ...] | None: ...


# --- validation ----------------------------------------------------------------------------
def _free_text(issues: list[FieldIssue], field: str, value: str | None, max_len: int) -> None:
    if value is None:
        return
    if len(value) > max_len:
        issues.append(FieldIssue(field, f"Must be at most {max_len} characters."))
    elif (problem := text_issue(value, multiline=True)) is not None:  # the one text rule (core/text.py)
        issues.append(FieldIssue(field, problem))


def _check(issues: list[FieldIssue]) -> None:
    if issues:
        raise ValidationFailed("Request body failed validation.", issues)


def status_filter(status: str | None) -> str | None:
    """The ``status`` filter in either case, as stored (upper case)."""
    if status is None:
        return None
    wanted = status.strip().upper()
    if wanted not in repo.STATUSES:
        _check([FieldIssue("status", f"Must be one of {', '.join(repo.STATUSES)} (either case).")])
    return wanted


# --- reading -------------------------------------------------------------------------------
async def list_approvals(runtime: Runtime, org_id: str, who: Decider, *, status: str | None, uapk_id: str | None,
                         limit: int, offset: int, now: datetime) -> tuple[list[Approval], int]:
    """A restricted key (``uapk_ids``) sees only its agents' approvals."""
    wanted = status_filter(status)
    async with runtime.sessions() as session:
        rows, total = await repo.list_for_org(
            session, org_id, now=now, status=wanted, uapk_id=uapk_id, uapk_ids=who.uapk_ids, limit=limit, offset=offset,
        )
    return list(rows), total


async def visible(runtime: Runtime, org_id: str, approval_id: str, who: Decider) -> Approval:
    """One approval, 404 when missing, another org's, or of an agent a restricted key may not see."""
    async with runtime.sessions() as session:
        approval = await repo.get(session, org_id, approval_id)
    if approval is None or (who.uapk_ids is not None and approval.uapk_id not in who.uapk_ids):
        raise NotFound()
    return approval


# --- deciding ------------------------------------------------------------------------------
def _not_pending(approval: Approval, now: datetime) -> Conflict:
    status = repo.effective_status(approval, now)
    if status == repo.EXPIRED:
        return Conflict("The approval has expired and can no longer be decided.")
    return Conflict(f"The approval is not pending (status {status}).")


async def _four_eyes(runtime: Runtime, who: Decider, approval: Approval) -> None:
    """The credential that requested the action, and the user who owns that credential (the
    user who created the API key), may not decide its approval: one person must not both
    ask for and grant an exception (``BASTION_APPROVAL_FOUR_EYES``, on by default)."""
    key_id = approval.requested_by_key
    if not runtime.settings.approval_four_eyes or key_id is None:
        return
    if who.kind == "api_key" and who.key_id == key_id:
        raise PermissionDenied(
            "Four-eyes rule: the API key that requested this action may not decide its approval; "
            "another approver must."
        )
    if who.kind == "user":
        async with runtime.sessions() as session:
            owner = await repo.key_owner(session, approval.org_id, key_id)
        if owner is not None and owner.lower() == who.actor.lower():
            raise PermissionDenied(
                "Four-eyes rule: you own the API key that requested this action, so you may not decide "
                "its approval; another approver must."
            )


async def _decidable(runtime: Runtime, org_id: str, approval_id: str, who: Decider) -> tuple[Approval, datetime]:
    approval = await visible(runtime, org_id, approval_id, who)
    await _four_eyes(runtime, who, approval)
    now = utcnow()
    if repo.effective_status(approval, now) != repo.PENDING:
        raise _not_pending(approval, now)
    return approval, now


async def _decide(runtime: Runtime, ctx: ChangeContext, who: Decider, approval: Approval, now: datetime,
                  kind: str, audited: dict[str, Any], **decision: Any) -> Approval:
    """The conditional update and, when this request won, its audit event, in one transaction;
    the approval as it now reads (409 when another decision came first)."""
    async with runtime.sessions() as session, session.begin():
        won = await repo.decide(session, approval.org_id, approval.id, actor=who.actor, now=now, **decision)
        if won:  # audited inside the transaction: a decision that cannot be audited is not made
            await ctx.record(
                kind, org_id=approval.org_id, uapk_id=approval.uapk_id, agent_id=approval.agent_id,
                capability=approval.capability, interaction_id=approval.interaction_id,
                details={"approval_id": approval.id, **{k: v for k, v in audited.items() if v is not None}},
            )
    async with runtime.sessions() as session:
        fresh = await repo.get(session, approval.org_id, approval.id)
    assert fresh is not None  # approvals are never deleted
    if not won:
        raise _not_pending(fresh, utcnow())
    return fresh


async def approve(runtime: Runtime, ctx: ChangeContext, who: Decider, org_id: str, approval_id: str, *,
                  notes: str | None, expires_in_seconds: int | None, sign: OverrideSigner) -> Approval:
    """Approve: sign an override token bound to the exact action (``iat`` = the decision's
    time, so the agent's poll re-signs the same token) and record its id and expiry."""
    issues: list[FieldIssue] = []
    _free_text(issues, "notes", notes, MAX_NOTES)
    ttl = runtime.settings.override_token_ttl_seconds if expires_in_seconds is None else expires_in_seconds
    if expires_in_seconds is not None and not MIN_OVERRIDE_TTL <= ttl <= MAX_OVERRIDE_TTL:
        issues.append(FieldIssue("expires_in_seconds", f"Must be between {MIN_OVERRIDE_TTL} and {MAX_OVERRIDE_TTL}."))
    _check(issues)
    approval, now = await _decidable(runtime, org_id, approval_id, who)
    try:
        _token, jti, exp = sign(approval, ttl, int(now.timestamp()))
    except ValueError:
        # e.g. an integer beyond 2**53 in params: RFC 8785 cannot canonicalise it, so no
        # override token could ever match this action. Deny it instead.
        raise Unprocessable(
            "This action cannot be bound to an override token (its params are not representable "
            "in canonical JSON); deny it instead."
        ) from None
    override_expires_at = datetime.fromtimestamp(exp, UTC)
    return await _decide(
        runtime, ctx, who, approval, now, "approval.approved",
        {"notes": notes, "override_jti": jti, "override_expires_at": isoformat(override_expires_at)},
        to_status=repo.APPROVED, notes=notes, override_jti=jti, override_expires_at=override_expires_at,
    )


async def deny(runtime: Runtime, ctx: ChangeContext, who: Decider, org_id: str, approval_id: str, *,
               reason: str | None, notes: str | None) -> Approval:
    issues: list[FieldIssue] = []
    _free_text(issues, "reason", reason, MAX_REASON)
    _free_text(issues, "notes", notes, MAX_NOTES)
    _check(issues)
    approval, now = await _decidable(runtime, org_id, approval_id, who)
    return await _decide(
        runtime, ctx, who, approval, now, "approval.denied", {"notes": notes, "reason": reason},
        to_status=repo.DENIED, notes=notes, reason=reason,
    )
