"""Load an organization from SQL and compile it: the one way the server (``GatewayState``), the
CLI (``bastion policy test --org``) and tests build a ``CompiledOrg``.

Reads, in order: the org's ``org_state.version`` with its manifests (``store.gateway_state``),
then its policy rules (``store.policy_rules``). The version is read first, so a change
committed in between carries a higher version and is loaded again when announced or polled:
a snapshot is never labelled newer than what it holds.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policies.compile import CompiledOrg, ManifestSnapshot, OrgPolicySource, compile_org
from policies.rules import RuleIndex
from store import gateway_state, policy_rules


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def manifest_snapshot(r: gateway_state.ManifestRow) -> ManifestSnapshot:
    c = r.constraints
    human = c.get("require_human_approval")
    return ManifestSnapshot(
        manifest_id=r.id,
        uapk_id=r.uapk_id,
        status=r.status,
        approved=tuple(r.approved),
        require_human_approval=tuple(x for x in human if isinstance(x, str)) if isinstance(human, list) else (),
        max_actions_per_hour=_int_or_none(c.get("max_actions_per_hour")),
        max_actions_per_day=_int_or_none(c.get("max_actions_per_day")),
        team=r.team,
        manifest_hash=r.manifest_hash,
        version=r.version,
        created_at=r.created_at.timestamp() if r.created_at else 0.0,
        require_capability_token=c.get("require_capability_token") is True,
    )


def source_from_rows(rows: gateway_state.OrgRows, rules: policy_rules.GatewayRules) -> OrgPolicySource:
    shadow = RuleIndex.build(rules.shadow, rules.shadow_version or 0) if rules.shadow is not None else None
    return OrgPolicySource(
        org_id=rows.org_id,
        version=rows.version,
        manifests=tuple(manifest_snapshot(r) for r in rows.manifests),
        rules=RuleIndex.build(rules.live, rules.live_version),
        shadow_rules=shadow,
    )


async def load_source(session: AsyncSession, org_id: str) -> OrgPolicySource:
    rows = await gateway_state.load_org_rows(session, org_id)
    rules = await policy_rules.load_gateway_rules(session, org_id)  # after the version: never newer-labelled
    return source_from_rows(rows, rules)


async def load_compiled_org(
    sessions: AsyncSession | async_sessionmaker[AsyncSession],
    org_id: str,
    *,
    default_per_hour: int,
    default_per_day: int,
) -> CompiledOrg:
    """``sessions``: a session (used as is, outside any transaction) or a session factory (one
    session is opened and closed)."""
    if isinstance(sessions, AsyncSession):
        source = await load_source(sessions, org_id)
    else:
        async with sessions() as session:
            source = await load_source(session, org_id)
    return compile_org(source, default_per_hour=default_per_hour, default_per_day=default_per_day)
