"""Approvals repository: escalated actions waiting for (or decided by) a human.

Statuses are stored uppercase: PENDING, APPROVED, DENIED. EXPIRED is never written: a row
that is still PENDING after ``expires_at`` *reads* as EXPIRED (``effective_status``) and
the filters translate it into the matching SQL, so no background job is needed and a
decision can never race an expiry sweep.

Decisions are conditional updates (``WHERE status = 'PENDING' AND expires_at > now``): of
two concurrent decisions exactly one changes the row, the other sees ``rowcount == 0``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import ApiKey, Approval, new_id

PENDING = "PENDING"
APPROVED = "APPROVED"
DENIED = "DENIED"
EXPIRED = "EXPIRED"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED)


def effective_status(approval: Approval, now: datetime) -> str:
    if approval.status == PENDING and approval.expires_at <= now:
        return EXPIRED
    return approval.status


async def insert(
    session: AsyncSession,
    *,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    capability: str,
    action: dict[str, Any],
    action_hash: str,
    counterparty: dict[str, Any] | None = None,
    reasons: list[dict[str, Any]],
    interaction_id: str,
    requested_by_key: str | None,
    created_at: datetime,
    expires_at: datetime,
) -> Approval:
    row = Approval(
        id=new_id(),
        org_id=org_id,
        uapk_id=uapk_id,
        agent_id=agent_id,
        capability=capability,
        action=action,
        counterparty=counterparty,
        action_hash=action_hash,
        reasons=reasons,
        interaction_id=interaction_id,
        requested_by_key=requested_by_key,
        status=PENDING,
        created_at=created_at,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return row


async def lock_agent(session: AsyncSession, org_id: str, uapk_id: str) -> None:
    """Serialize escalations of one agent (org, uapk_id) until the transaction ends, across
    processes, so that "find the identical pending approval, count the pending ones, insert"
    is atomic. Must be the transaction's first statement.

    PostgreSQL: a transaction-scoped advisory lock on a 64-bit key derived from the agent.
    SQLite: a write statement (matching no row) takes the database's write lock before
    anything is read (no stale read, no failed lock upgrade); other writers wait for it."""
    dialect = session.bind.dialect.name if session.bind is not None else ""
    if dialect == "postgresql":
        digest = hashlib.sha256(f"bastion:approvals:{org_id}:{uapk_id}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        await session.execute(
            update(Approval).where(Approval.id == "").values(status=Approval.status)
            .execution_options(synchronize_session=False)
        )


async def find_pending(
    session: AsyncSession, org_id: str, uapk_id: str, agent_id: str, action_hash: str, now: datetime
) -> Approval | None:
    """The oldest pending, unexpired approval of exactly this action (same action hash)."""
    return (
        await session.execute(
            select(Approval)
            .where(
                Approval.org_id == org_id, Approval.uapk_id == uapk_id, Approval.agent_id == agent_id,
                Approval.action_hash == action_hash, Approval.status == PENDING, Approval.expires_at > now,
            )
            .order_by(Approval.created_at, Approval.id)
            .limit(1)
        )
    ).scalar_one_or_none()


async def count_pending(session: AsyncSession, org_id: str, uapk_id: str, now: datetime) -> int:
    """Pending, unexpired approvals of one agent (every agent_id instance of the uapk_id)."""
    return int((
        await session.execute(
            select(func.count()).select_from(Approval).where(
                Approval.org_id == org_id, Approval.uapk_id == uapk_id, Approval.status == PENDING,
                Approval.expires_at > now,
            )
        )
    ).scalar_one())


async def get(session: AsyncSession, org_id: str, approval_id: str) -> Approval | None:
    """One approval of ``org_id``; another org's id reads exactly like a missing one."""
    if not approval_id or len(approval_id) > 64:
        return None
    row = (
        await session.execute(select(Approval).where(Approval.id == approval_id, Approval.org_id == org_id))
    ).scalar_one_or_none()
    return row


async def key_owner(session: AsyncSession, org_id: str, key_id: str) -> str | None:
    """Who created API key ``key_id`` (``created_by``: a user's email, or the creating key's
    name), for the four-eyes rule; ``None`` when unknown."""
    return (
        await session.execute(select(ApiKey.created_by).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
    ).scalar_one_or_none()


def _status_clause(status: str, now: datetime) -> Any:
    if status == PENDING:
        return and_(Approval.status == PENDING, Approval.expires_at > now)
    if status == EXPIRED:
        return and_(Approval.status == PENDING, Approval.expires_at <= now)
    return Approval.status == status


async def list_for_org(
    session: AsyncSession,
    org_id: str,
    *,
    now: datetime,
    status: str | None = None,
    uapk_id: str | None = None,
    uapk_ids: Sequence[str] | None = None,
    limit: int = 25,
    offset: int = 0,
) -> tuple[list[Approval], int]:
    """Newest first. ``uapk_ids`` (a key's restriction) limits what is visible at all."""
    conds: list[Any] = [Approval.org_id == org_id]
    if status is not None:
        conds.append(_status_clause(status, now))
    if uapk_id is not None:
        conds.append(Approval.uapk_id == uapk_id)
    if uapk_ids is not None:
        conds.append(Approval.uapk_id.in_(list(uapk_ids)))
    total = (await session.execute(select(func.count()).select_from(Approval).where(*conds))).scalar_one()
    rows = (
        await session.execute(
            select(Approval).where(*conds).order_by(Approval.created_at.desc(), Approval.id).limit(limit).offset(offset)
        )
    ).scalars().all()
    return list(rows), int(total)


async def decide(
    session: AsyncSession,
    org_id: str,
    approval_id: str,
    *,
    to_status: str,
    actor: str,
    now: datetime,
    notes: str | None = None,
    reason: str | None = None,
    override_jti: str | None = None,
    override_expires_at: datetime | None = None,
) -> bool:
    """Move a pending, unexpired approval to APPROVED or DENIED. False when it was not
    pending any more (decided concurrently, or expired): the caller answers 409."""
    if to_status not in (APPROVED, DENIED):
        raise ValueError(to_status)
    values: dict[str, Any] = {
        "status": to_status,
        "decided_by": actor,
        "decided_at": now,
        "notes": notes,
        "reason": reason,
    }
    if to_status == APPROVED:
        values.update(override_jti=override_jti, override_expires_at=override_expires_at)
    result = await session.execute(
        update(Approval)
        .where(
            Approval.id == approval_id,
            Approval.org_id == org_id,
            Approval.status == PENDING,
            Approval.expires_at > now,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def mark_override_used(session: AsyncSession, org_id: str, approval_id: str, jti: str, now: datetime) -> bool:
    """Record the first use of an approval's override token (idempotent)."""
    result = await session.execute(
        update(Approval)
        .where(
            Approval.id == approval_id,
            Approval.org_id == org_id,
            Approval.override_jti == jti,
            Approval.override_used_at.is_(None),
        )
        .values(override_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def overrides_used_since(session: AsyncSession, since: datetime | None, now: datetime) -> list[tuple[str, datetime]]:
    """(jti, override_expires_at) of spent override tokens not yet expired, spent after ``since``."""
    q = select(Approval.override_jti, Approval.override_expires_at).where(
        Approval.override_used_at.is_not(None), Approval.override_expires_at > now, Approval.override_jti.is_not(None)
    )
    if since is not None:
        q = q.where(Approval.override_used_at >= since)
    return [(r[0], r[1]) for r in (await session.execute(q)).all()]
