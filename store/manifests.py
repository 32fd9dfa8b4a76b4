"""Manifests repository: registration, queries, state transitions, versions and events.

Every state change is a conditional ``UPDATE ... WHERE status = :expected`` whose rowcount
tells whether this request won; the loser sees the current state and gets a conflict. The
caller runs each function inside one transaction and bumps the org's state version there
(``store.changes``) so the gateway learns about it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import captokens
from store.models import Manifest, ManifestEvent, new_id

STATUSES = ("pending", "active", "rejected", "suspended", "revoked", "superseded")

# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "approve": (("pending",), "active"),
    "reject": (("pending",), "rejected"),
    "suspend": (("active",), "suspended"),
    "reactivate": (("suspended",), "active"),
    "revoke": (("pending", "active", "suspended", "rejected", "superseded"), "revoked"),
}
# The actor/time columns each action fills in.
_STAMP = {
    "approve": ("approved_by", "approved_at"),
    "reject": ("rejected_by", "rejected_at"),
    "suspend": ("suspended_by", "suspended_at"),
    "reactivate": ("reactivated_by", "reactivated_at"),
    "revoke": ("revoked_by", "revoked_at"),
}
_MAX_RETRIES = 5


class DuplicateVersion(Exception):
    pass


class TransitionRefused(Exception):
    """The manifest is in a state the action cannot start from."""

    def __init__(self, action: str, current: str):
        super().__init__(f"{action} from {current}")
        self.action = action
        self.current = current


@dataclass
class TransitionResult:
    manifest: Manifest
    previous_status: str
    superseded: list[Manifest]


def _event(m: Manifest, from_status: str | None, to_status: str, actor: str, at: datetime,
           reason: str | None, notes: str | None) -> ManifestEvent:
    return ManifestEvent(
        manifest_id=m.id, org_id=m.org_id, from_status=from_status, to_status=to_status,
        actor=actor, at=at, reason=reason, notes=notes,
    )


async def register(
    session: AsyncSession,
    org_id: str,
    document: dict[str, Any],
    digest: str,
    actor: str,
    now: datetime,
) -> Manifest:
    """Insert a new ``pending`` version. Raises DuplicateVersion if (uapk_id, version) exists."""
    agent = document["agent"]
    requested = list(document["capabilities"]["requested"])
    existing = (
        await session.execute(
            select(Manifest.id).where(
                Manifest.org_id == org_id, Manifest.uapk_id == agent["id"], Manifest.version == agent["version"]
            )
        )
    ).first()
    if existing is not None:
        raise DuplicateVersion(agent["version"])
    m = Manifest(
        id=new_id(), org_id=org_id, uapk_id=agent["id"], version=agent["version"], team=agent.get("team"),
        status="pending", document=document, manifest_hash=digest, requested=requested, approved=[],
        created_by=actor, created_at=now, status_changed_at=now, status_changed_by=actor,
    )
    session.add(m)
    try:
        await session.flush()
    except IntegrityError:  # registered concurrently (the caller's transaction rolls back)
        raise DuplicateVersion(agent["version"]) from None
    session.add(_event(m, None, "pending", actor, now, None, None))
    await session.flush()
    return m


async def get(session: AsyncSession, org_id: str, manifest_id: str, *, fresh: bool = False) -> Manifest | None:
    q = select(Manifest).where(Manifest.id == manifest_id, Manifest.org_id == org_id)
    if fresh:
        q = q.execution_options(populate_existing=True)
    return (await session.execute(q)).scalar_one_or_none()


async def list_manifests(
    session: AsyncSession,
    org_id: str,
    *,
    status: str | None,
    team: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Manifest], int]:
    conds = [Manifest.org_id == org_id]
    if status is not None:
        conds.append(Manifest.status == status)
    if team is not None:
        conds.append(Manifest.team == team)
    total = (await session.execute(select(func.count()).select_from(Manifest).where(*conds))).scalar_one()
    rows = (
        await session.execute(
            select(Manifest).where(*conds).order_by(Manifest.created_at.desc(), Manifest.id).limit(limit).offset(offset)
        )
    ).scalars().all()
    return list(rows), int(total)


def _semver_key(version: str) -> tuple[Any, ...]:
    """Semver precedence (build metadata ignored), for ordering versions registered together."""
    core, _, rest = version.partition("+")[0].partition("-")
    nums = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
    if not rest:
        return (nums, 1, ())
    pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rest.split("."))
    return (nums, 0, pre)


def newest_first(rows: Sequence[Manifest]) -> list[Manifest]:
    return sorted(rows, key=lambda m: (m.created_at, _semver_key(m.version)), reverse=True)


async def versions(session: AsyncSession, org_id: str, uapk_id: str) -> list[Manifest]:
    """Every version of one agent, newest first."""
    rows = (
        await session.execute(select(Manifest).where(Manifest.org_id == org_id, Manifest.uapk_id == uapk_id))
    ).scalars().all()
    return newest_first(rows)


async def by_uapk(session: AsyncSession, org_id: str, uapk_id: str) -> Manifest | None:
    """The active version of an agent, else its newest one."""
    rows = await versions(session, org_id, uapk_id)
    for m in rows:
        if m.status == "active":
            return m
    return rows[0] if rows else None


async def events_of(session: AsyncSession, org_id: str, manifest_ids: Sequence[str]) -> dict[str, list[ManifestEvent]]:
    """State-change events per manifest, oldest first."""
    out: dict[str, list[ManifestEvent]] = {mid: [] for mid in manifest_ids}
    if not manifest_ids:
        return out
    rows = (
        await session.execute(
            select(ManifestEvent)
            .where(ManifestEvent.org_id == org_id, ManifestEvent.manifest_id.in_(list(manifest_ids)))
            .order_by(ManifestEvent.at, ManifestEvent.id)
        )
    ).scalars().all()
    for e in rows:
        out.setdefault(e.manifest_id, []).append(e)
    return out


async def _lock_agent(session: AsyncSession, org_id: str, uapk_id: str) -> None:
    """PostgreSQL: lock every version of the agent (in id order, so two approvers cannot
    deadlock) so that approving one version and superseding the others is atomic. SQLite
    serializes writers on its own (``FOR UPDATE`` renders as nothing there)."""
    await session.execute(
        select(Manifest.id)
        .where(Manifest.org_id == org_id, Manifest.uapk_id == uapk_id)
        .order_by(Manifest.id)
        .with_for_update()
    )


async def transition(
    session: AsyncSession,
    org_id: str,
    manifest_id: str,
    action: str,
    actor: str,
    now: datetime,
    *,
    reason: str | None = None,
    notes: str | None = None,
    approved: list[str] | None = None,
) -> TransitionResult | None:
    """Apply ``action``; None if the manifest does not exist in this org.

    Raises TransitionRefused naming the current state when the action is not allowed from it
    (including when a concurrent request changed it first)."""
    allowed_from, to_status = TRANSITIONS[action]
    m = await get(session, org_id, manifest_id)
    if m is None:
        return None
    if m.status not in allowed_from:
        raise TransitionRefused(action, m.status)
    if action == "approve":
        await _lock_agent(session, org_id, m.uapk_id)
    by_col, at_col = _STAMP[action]
    values: dict[str, Any] = {
        "status": to_status, "status_changed_at": now, "status_changed_by": actor,
        by_col: actor, at_col: now, "reason": reason, "notes": notes,
    }
    if action == "approve":
        values["approved"] = list(approved if approved is not None else m.requested)
    current = m.status
    for _ in range(_MAX_RETRIES):
        result = await session.execute(
            update(Manifest)
            .where(Manifest.id == manifest_id, Manifest.org_id == org_id, Manifest.status == current)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            break
        # Someone else changed it first: look again (this statement sees their commit).
        fresh = await get(session, org_id, manifest_id, fresh=True)
        if fresh is None:
            return None
        if fresh.status not in allowed_from:
            raise TransitionRefused(action, fresh.status)
        current = fresh.status
    else:  # pragma: no cover - only under pathological contention
        raise TransitionRefused(action, current)
    session.add(_event(m, current, to_status, actor, now, reason, notes))
    if to_status in ("suspended", "revoked"):
        # Its capability tokens are revoked with it and stay revoked: a reactivated manifest
        # has the same hash, so the gateway would otherwise accept them again.
        await captokens.revoke_for_manifest(session, org_id, m.uapk_id, m.manifest_hash, actor, now)

    superseded: list[Manifest] = []
    if to_status == "active":
        superseded = await _supersede_others(session, org_id, m.uapk_id, manifest_id, m.version, actor, now)
    m = await get(session, org_id, manifest_id, fresh=True)
    assert m is not None
    await session.flush()
    return TransitionResult(m, current, superseded)


async def _supersede_others(
    session: AsyncSession, org_id: str, uapk_id: str, keep_id: str, version: str, actor: str, now: datetime
) -> list[Manifest]:
    """Mark every other active or suspended version of the agent ``superseded``."""
    others = (
        await session.execute(
            select(Manifest)
            .where(
                Manifest.org_id == org_id, Manifest.uapk_id == uapk_id, Manifest.id != keep_id,
                Manifest.status.in_(("active", "suspended")),
            )
            .execution_options(populate_existing=True)
        )
    ).scalars().all()
    done: list[Manifest] = []
    reason = f"Superseded by version {version}"
    for other in others:
        before = other.status
        result = await session.execute(
            update(Manifest)
            .where(Manifest.id == other.id, Manifest.status == before)
            .values(status="superseded", superseded_at=now, status_changed_at=now, status_changed_by=actor, reason=reason, notes=None)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.add(_event(other, before, "superseded", actor, now, reason, None))
            done.append(other)
    return done
