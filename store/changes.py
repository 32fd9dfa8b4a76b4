"""Telling the gateways that an organization's state changed.

Every change the gateway caches (manifest transitions, policy versions, key revocations)
does two things:

1. inside the writing transaction, ``bump_org_version`` increments ``org_state.version``
   (so a process that missed a message notices within its poll interval), and
2. after the commit, ``announce`` publishes a typed message (``store.bus_messages``:
   ``ManifestChanged(org_id=..., version=..., ...)`` and the others) on the change bus (pub/sub
   in Redis mode, in-process otherwise), which every gateway process receives within
   milliseconds.

``store.unit_of_work`` does both, with the audit event, for a change in one transaction.
Changes that do not alter what a gateway compiles (a capability token revoked, an override
spent) announce without bumping the version: no process reloads anything for them.
"""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import utcnow
from store.bus import ChangeBus
from store.bus_messages import Change
from store.models import ChangeLog


async def bump_org_version(session: AsyncSession, org_id: str) -> int:
    """Increment and return the org's state version (conditional, race-free)."""
    now = utcnow()
    result = await session.execute(
        update(ChangeLog).where(ChangeLog.org_id == org_id).values(version=ChangeLog.version + 1, updated_at=now)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        try:
            async with session.begin_nested():
                session.add(ChangeLog(org_id=org_id, version=1, updated_at=now))
        except IntegrityError:  # created concurrently: increment theirs
            await session.execute(
                update(ChangeLog).where(ChangeLog.org_id == org_id).values(version=ChangeLog.version + 1, updated_at=now)
            )
    return int((await session.execute(select(ChangeLog.version).where(ChangeLog.org_id == org_id))).scalar_one())


async def org_versions(session: AsyncSession) -> dict[str, int]:
    rows = (await session.execute(select(ChangeLog.org_id, ChangeLog.version))).all()
    return {r[0]: int(r[1]) for r in rows}


async def announce(bus: ChangeBus, message: Change) -> None:
    """After the commit: tell this process and every other one."""
    await bus.publish(message)
