"""Repository for capability-token metadata and revocations."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import CapabilityToken, Manifest


async def active_manifest(session: AsyncSession, org_id: str, uapk_id: str) -> Manifest | None:
    """The active manifest, share-locked until the caller's transaction ends (PostgreSQL): a
    suspension waits for a token being issued against it and then revokes that token too, or
    the issue waits for the suspension and finds no active manifest. Either way no token
    issued against a suspended manifest escapes ``revoke_for_manifest``."""
    return (
        await session.execute(
            select(Manifest)
            .where(Manifest.org_id == org_id, Manifest.uapk_id == uapk_id, Manifest.status == "active")
            .with_for_update(read=True)
        )
    ).scalars().first()


async def record(session: AsyncSession, **fields: Any) -> CapabilityToken:
    row = CapabilityToken(**fields)
    session.add(row)
    await session.flush()
    return row


async def list_tokens(session: AsyncSession, org_id: str, limit: int, offset: int) -> tuple[list[CapabilityToken], int]:
    where = CapabilityToken.org_id == org_id
    total = (await session.execute(select(func.count()).select_from(CapabilityToken).where(where))).scalar_one()
    rows = (
        await session.execute(
            select(CapabilityToken).where(where).order_by(CapabilityToken.created_at.desc(), CapabilityToken.id).limit(limit).offset(offset)
        )
    ).scalars().all()
    return list(rows), int(total)


async def get(session: AsyncSession, org_id: str, token_id: str) -> CapabilityToken | None:
    return (
        await session.execute(select(CapabilityToken).where(CapabilityToken.id == token_id, CapabilityToken.org_id == org_id))
    ).scalar_one_or_none()


async def revoke(session: AsyncSession, org_id: str, token_id: str, by: str, when: datetime) -> CapabilityToken | None:
    """Idempotent: revoking twice keeps the first time and author."""
    await session.execute(
        update(CapabilityToken)
        .where(CapabilityToken.id == token_id, CapabilityToken.org_id == org_id, CapabilityToken.revoked_at.is_(None))
        .values(revoked_at=when, revoked_by=by)
    )
    row = await get(session, org_id, token_id)
    if row is not None:
        await session.refresh(row)
    return row


async def revoke_for_manifest(
    session: AsyncSession, org_id: str, uapk_id: str, manifest_hash: str, by: str, when: datetime
) -> int:
    """Revoke every unexpired, unrevoked token issued against one manifest version; called in
    the transaction that suspends or revokes it. A reactivated manifest has the same hash, so
    without a revocation its old tokens would verify again. Returns how many were revoked."""
    result = await session.execute(
        update(CapabilityToken)
        .where(
            CapabilityToken.org_id == org_id, CapabilityToken.uapk_id == uapk_id,
            CapabilityToken.manifest_hash == manifest_hash, CapabilityToken.revoked_at.is_(None),
            CapabilityToken.expires_at > when,
        )
        .values(revoked_at=when, revoked_by=by)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def revoked_since(session: AsyncSession, since: datetime | None, now: datetime) -> list[tuple[str, datetime, datetime | None]]:
    """(jti, expires_at, revoked_at) of revoked tokens not yet expired, revoked after ``since``."""
    q = select(CapabilityToken.id, CapabilityToken.expires_at, CapabilityToken.revoked_at).where(
        CapabilityToken.revoked_at.is_not(None), CapabilityToken.expires_at > now
    )
    if since is not None:
        q = q.where(CapabilityToken.revoked_at >= since)
    return [(r[0], r[1], r[2]) for r in (await session.execute(q)).all()]
