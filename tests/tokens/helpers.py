"""Test helpers for capability tokens: an active manifest written straight to the store."""
from __future__ import annotations

from typing import Any

from core.canonical import manifest_hash
from core.clock import utcnow
from store.bus_messages import ManifestChanged
from store.changes import announce, bump_org_version
from store.models import Manifest, new_id


async def active_manifest(
    app: Any,
    org_id: str,
    uapk_id: str = "support-bot",
    approved: list[str] | None = None,
    *,
    version: str = "1.0.0",
    status: str = "active",
    constraints: dict[str, Any] | None = None,
) -> Manifest:
    approved = approved if approved is not None else ["crm:read", "crm:update", "email:*"]
    document = {
        "version": "1.0",
        "agent": {"id": uapk_id, "name": uapk_id.title(), "version": version},
        "capabilities": {"requested": approved},
        "constraints": constraints or {"max_actions_per_hour": 100, "max_actions_per_day": 500},
    }
    runtime = app.state.runtime
    now = utcnow()
    async with runtime.sessions() as session, session.begin():
        m = Manifest(
            id=new_id(), org_id=org_id, uapk_id=uapk_id, version=version, team=None, status=status,
            document=document, manifest_hash=manifest_hash(document), requested=approved, approved=approved,
            created_by="test", created_at=now, status_changed_at=now, status_changed_by="test",
        )
        session.add(m)
        version_no = await bump_org_version(session, org_id)
    await announce(runtime.bus, ManifestChanged(org_id=org_id, version=version_no, uapk_id=uapk_id, manifest_id=m.id,
                                                status=status))
    return m


async def set_status(app: Any, manifest: Manifest, status: str) -> None:
    from sqlalchemy import update

    runtime = app.state.runtime
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Manifest).where(Manifest.id == manifest.id).values(status=status))
        version_no = await bump_org_version(session, manifest.org_id)
    await announce(runtime.bus, ManifestChanged(org_id=manifest.org_id, version=version_no, uapk_id=manifest.uapk_id,
                                                manifest_id=manifest.id, status=status))
