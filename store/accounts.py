"""Repositories for organizations, users, memberships and API keys."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import utcnow
from store.models import ApiKey, Invitation, Membership, Organization, User, new_id

ROLES = ("owner", "admin", "approver", "policy_author", "viewer")


class DuplicateError(Exception):
    pass


async def create_org(session: AsyncSession, name: str, slug: str) -> Organization:
    org = Organization(id=new_id(), name=name, slug=slug, created_at=utcnow())
    session.add(org)
    try:
        await session.flush()
    except IntegrityError:
        raise DuplicateError("slug") from None
    return org


async def get_org(session: AsyncSession, org_id: str) -> Organization | None:
    return await session.get(Organization, org_id)


async def get_org_by_slug(session: AsyncSession, slug: str) -> Organization | None:
    return (await session.execute(select(Organization).where(Organization.slug == slug))).scalar_one_or_none()


async def orgs_of_user(session: AsyncSession, user_id: str, limit: int, offset: int) -> tuple[list[tuple[Organization, str]], int]:
    q = select(Organization, Membership.role).join(Membership, Membership.org_id == Organization.id).where(
        Membership.user_id == user_id
    )
    total = (await session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await session.execute(q.order_by(Organization.created_at, Organization.id).limit(limit).offset(offset))).all()
    return [(r[0], r[1]) for r in rows], total


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()


async def create_user(session: AsyncSession, email: str, password_hash: str) -> User:
    user = User(id=new_id(), email=email, password_hash=password_hash, created_at=utcnow())
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise DuplicateError("email") from None
    return user


async def get_membership(session: AsyncSession, org_id: str, user_id: str) -> Membership | None:
    return await session.get(Membership, (org_id, user_id))


async def add_member(session: AsyncSession, org_id: str, user_id: str, role: str) -> Membership:
    m = Membership(org_id=org_id, user_id=user_id, role=role, created_at=utcnow())
    session.add(m)
    try:
        await session.flush()
    except IntegrityError:
        raise DuplicateError("member") from None
    return m


async def list_members(session: AsyncSession, org_id: str, limit: int, offset: int) -> tuple[list[tuple[User, Membership]], int]:
    q = select(User, Membership).join(Membership, Membership.user_id == User.id).where(Membership.org_id == org_id)
    total = (await session.execute(select(func.count()).select_from(Membership).where(Membership.org_id == org_id))).scalar_one()
    rows = (await session.execute(q.order_by(Membership.created_at, User.id).limit(limit).offset(offset))).all()
    return [(r[0], r[1]) for r in rows], total


async def count_owners(session: AsyncSession, org_id: str) -> int:
    return (
        await session.execute(
            select(func.count()).select_from(Membership).where(Membership.org_id == org_id, Membership.role == "owner")
        )
    ).scalar_one()


async def create_api_key(
    session: AsyncSession,
    org_id: str,
    name: str,
    prefix: str,
    key_hash: str,
    role: str,
    uapk_ids: list[str] | None,
    created_by: str | None,
) -> ApiKey:
    key = ApiKey(
        id=new_id(), org_id=org_id, name=name, prefix=prefix, key_hash=key_hash, role=role,
        uapk_ids=uapk_ids, created_by=created_by, created_at=utcnow(),
    )
    session.add(key)
    await session.flush()
    return key


async def find_api_key(session: AsyncSession, key_hash: str) -> ApiKey | None:
    return (await session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash))).scalar_one_or_none()


async def list_api_keys(session: AsyncSession, org_id: str, limit: int, offset: int) -> tuple[list[ApiKey], int]:
    total = (await session.execute(select(func.count()).select_from(ApiKey).where(ApiKey.org_id == org_id))).scalar_one()
    rows = (
        await session.execute(
            select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at, ApiKey.id).limit(limit).offset(offset)
        )
    ).scalars().all()
    return list(rows), total


async def revoke_api_key(session: AsyncSession, org_id: str, key_id: str, when: datetime | None = None) -> ApiKey | None:
    """Conditional update: revoking twice is harmless, revoking another org's key finds nothing."""
    key = (await session.execute(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))).scalar_one_or_none()
    if key is None:
        return None
    await session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=when or utcnow())
    )
    await session.refresh(key)
    return key


# --- invitations -----------------------------------------------------------------------------
INVITATION_TTL = timedelta(days=7)


def invitation_status(inv: Invitation, now: datetime) -> str:
    """The stored status, or ``expired`` for a pending invitation past its expiry."""
    return "expired" if inv.status == "pending" and inv.expires_at <= now else inv.status


async def create_invitation(session: AsyncSession, org_id: str, email: str, role: str, invited_by: str) -> Invitation:
    """A pending invitation of ``email`` to ``org_id``. An expired pending one is closed first;
    a live one raises ``DuplicateError`` (the partial unique index also catches a race)."""
    now = utcnow()
    await session.execute(
        update(Invitation)
        .where(Invitation.org_id == org_id, Invitation.email == email, Invitation.status == "pending",
               Invitation.expires_at <= now)
        .values(status="expired")
    )
    inv = Invitation(id=new_id(), org_id=org_id, email=email, role=role, status="pending", invited_by=invited_by,
                     created_at=now, expires_at=now + INVITATION_TTL)
    session.add(inv)
    try:
        await session.flush()
    except IntegrityError:
        raise DuplicateError("invitation") from None
    return inv


async def list_org_invitations(session: AsyncSession, org_id: str, limit: int, offset: int) -> tuple[list[Invitation], int]:
    total = (await session.execute(select(func.count()).select_from(Invitation).where(Invitation.org_id == org_id))).scalar_one()
    rows = (
        await session.execute(
            select(Invitation).where(Invitation.org_id == org_id)
            .order_by(Invitation.created_at, Invitation.id).limit(limit).offset(offset)
        )
    ).scalars().all()
    return list(rows), total


async def get_org_invitation(session: AsyncSession, org_id: str, invitation_id: str) -> Invitation | None:
    return (
        await session.execute(select(Invitation).where(Invitation.id == invitation_id, Invitation.org_id == org_id))
    ).scalar_one_or_none()


async def invitations_for(session: AsyncSession, email: str, now: datetime, limit: int, offset: int) -> tuple[list[tuple[Invitation, Organization]], int]:
    """Pending, unexpired invitations addressed to ``email``, with their organizations."""
    cond = and_(Invitation.email == email, Invitation.status == "pending", Invitation.expires_at > now)
    total = (await session.execute(select(func.count()).select_from(Invitation).where(cond))).scalar_one()
    rows = (
        await session.execute(
            select(Invitation, Organization).join(Organization, Organization.id == Invitation.org_id).where(cond)
            .order_by(Invitation.created_at, Invitation.id).limit(limit).offset(offset)
        )
    ).all()
    return [(r[0], r[1]) for r in rows], total


async def get_invitation_for(session: AsyncSession, invitation_id: str, email: str) -> Invitation | None:
    """The invitation if it is addressed to ``email`` (any other caller: as if it did not exist)."""
    return (
        await session.execute(select(Invitation).where(Invitation.id == invitation_id, Invitation.email == email))
    ).scalar_one_or_none()


async def close_invitation(session: AsyncSession, inv: Invitation, status: str, when: datetime) -> bool:
    """Conditional update pending -> ``status``: False when it was decided (or revoked) meanwhile."""
    result = await session.execute(
        update(Invitation).where(Invitation.id == inv.id, Invitation.status == "pending")
        .values(status=status, decided_at=when)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    await session.refresh(inv)
    return True


@dataclass
class BootstrapResult:
    org_id: str
    user_id: str
    api_key: str


async def lock_org(session: AsyncSession, org_id: str) -> None:
    """Serialize membership changes of one org (the last-owner check) on PostgreSQL;
    SQLite serializes writers by itself."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(select(Organization.id).where(Organization.id == org_id).with_for_update())
