"""Test helpers: manifests written straight to SQL (bump + announce, as the Manifests API does)."""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from core.canonical import manifest_hash
from core.clock import utcnow
from store.bus_messages import ManifestChanged
from store.changes import announce, bump_org_version
from store.models import Manifest


async def add_manifest(
    runtime: Any,
    org_id: str,
    uapk_id: str,
    *,
    approved: list[str] | None = None,
    status: str = "active",
    require_human_approval: list[str] | None = None,
    max_per_hour: int | None = None,
    max_per_day: int | None = None,
    team: str | None = "support",
    version: str = "1.0.0",
    notify: bool = True,
    age_seconds: int = 0,
) -> str:
    approved = ["email:send", "crm:read"] if approved is None else approved
    constraints: dict[str, Any] = {}
    if max_per_hour is not None:
        constraints["max_actions_per_hour"] = max_per_hour
    if max_per_day is not None:
        constraints["max_actions_per_day"] = max_per_day
    if require_human_approval is not None:
        constraints["require_human_approval"] = require_human_approval
    document = {
        "version": "1.0",
        "agent": {"id": uapk_id, "name": uapk_id, "version": version, "team": team},
        "capabilities": {"requested": approved},
        "constraints": constraints,
    }
    now = utcnow() - timedelta(seconds=age_seconds)
    mid = str(uuid.uuid4())
    async with runtime.sessions() as session, session.begin():
        session.add(
            Manifest(
                id=mid, org_id=org_id, uapk_id=uapk_id, version=version, team=team, status=status,
                document=document, manifest_hash=manifest_hash(document), requested=approved,
                approved=approved if status == "active" else [], created_by="test", created_at=now,
                status_changed_at=now, status_changed_by="test",
            )
        )
        ver = await bump_org_version(session, org_id)
    if notify:
        await announce(runtime.bus, ManifestChanged(org_id=org_id, version=ver, uapk_id=uapk_id, manifest_id=mid,
                                                    status=status))
    return mid


async def set_status(runtime: Any, org_id: str, manifest_id: str, status: str, *, notify: bool = True,
                     approved: list[str] | None = None) -> int:
    values: dict[str, Any] = {"status": status, "status_changed_at": utcnow()}
    if approved is not None:
        values["approved"] = approved
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(Manifest).where(Manifest.id == manifest_id).values(**values))
        uapk_id = (await session.execute(select(Manifest.uapk_id).where(Manifest.id == manifest_id))).scalar_one()
        ver = await bump_org_version(session, org_id)
    if notify:
        await announce(runtime.bus, ManifestChanged(org_id=org_id, version=ver, uapk_id=uapk_id,
                                                    manifest_id=manifest_id, status=status))
    return ver


def action(uapk_id: str = "support-bot", tool: str = "email", type: str = "send", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"uapk_id": uapk_id, "agent_id": "agent-1", "action": {"type": type, "tool": tool, "params": {}}}
    for k in ("amount", "currency", "description", "capability", "params"):
        if k in extra:
            body["action"][k] = extra.pop(k)
    body.update(extra)
    return body
