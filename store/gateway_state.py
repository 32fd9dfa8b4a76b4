"""The SQL the gateway runs to (re)load an organization's state; never on the hot path.

``load_org_rows`` reads the org's ``org_state.version`` FIRST and then its manifests, in one
transaction: a change committed between the two reads carries a higher version, so a poll
or its announcement rebuilds again; the other order could label old rows with a new version.
Documents are read only for active manifests (the only ones whose constraints matter).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import ChangeLog, Manifest


@dataclass(frozen=True, slots=True)
class ManifestRow:
    id: str
    uapk_id: str
    version: str
    status: str
    approved: list[str]
    constraints: dict[str, Any]
    team: str | None
    manifest_hash: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class OrgRows:
    org_id: str
    version: int
    manifests: list[ManifestRow]


async def org_version(session: AsyncSession, org_id: str) -> int:
    value = (await session.execute(select(ChangeLog.version).where(ChangeLog.org_id == org_id))).scalar_one_or_none()
    return int(value or 0)


async def org_versions_for(session: AsyncSession, org_ids: Iterable[str]) -> dict[str, int]:
    """Current versions of these orgs (0 for an org that never changed)."""
    ids = list(org_ids)
    if not ids:
        return {}
    rows = (await session.execute(select(ChangeLog.org_id, ChangeLog.version).where(ChangeLog.org_id.in_(ids)))).all()
    out = {i: 0 for i in ids}
    out.update({r[0]: int(r[1]) for r in rows})
    return out


async def load_org_rows(session: AsyncSession, org_id: str) -> OrgRows:
    async with session.begin():
        version = await org_version(session, org_id)
        light = (
            await session.execute(
                select(
                    Manifest.id, Manifest.uapk_id, Manifest.version, Manifest.status, Manifest.team,
                    Manifest.manifest_hash, Manifest.created_at,
                ).where(Manifest.org_id == org_id)
            )
        ).all()
        active = {
            r[0]: (r[1], r[2])
            for r in (
                await session.execute(
                    select(Manifest.id, Manifest.approved, Manifest.document).where(
                        Manifest.org_id == org_id, Manifest.status == "active"
                    )
                )
            ).all()
        }
    rows: list[ManifestRow] = []
    for mid, uapk_id, ver, status, team, mhash, created in light:
        approved: list[str] = []
        constraints: dict[str, Any] = {}
        if status == "active" and mid in active:
            approved_raw, document = active[mid]
            approved = [c for c in (approved_raw or []) if isinstance(c, str)]
            cons = document.get("constraints") if isinstance(document, dict) else None
            constraints = cons if isinstance(cons, dict) else {}
        elif status == "active":
            # Became active between the two reads of a non-snapshot isolation level: the
            # version read first is older, so the next poll/announcement reloads it.
            status = "pending"
        rows.append(ManifestRow(mid, uapk_id, ver, status, approved, constraints, team, mhash, created))
    return OrgRows(org_id, version, rows)
