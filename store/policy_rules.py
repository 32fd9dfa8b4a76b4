"""Organization policy rules in SQL: the Casbin adapter, versions, shadow set, shadow diffs.

* ``policy_rules`` holds the Casbin lines of each org's ``live`` and ``shadow`` rule sets
  (``p, subject, capability, effect, conditions, id`` in ``ptype, v0..v4``). Every read and
  write of it goes through ``AsyncRuleAdapter`` (pycasbin's async persist adapter interface:
  ``load_policy`` / ``save_policy`` into / from a Casbin model of policies/rules_model.conf).
* ``policy_versions`` keeps every live rule set ever published (version 1, 2, ...; author,
  time, what changed), and each shadow deployment (``kind`` "shadow").
* Every change is one unit of work (store.unit_of_work): ``org_state.version`` bumped first
  in its transaction (on PostgreSQL that UPDATE locks the org's row, so concurrent writers of
  one org take turns and version numbers never collide), the audit event inside it and, after
  the commit, ``PolicyChanged`` on the change bus: every gateway process rebuilds its compiled
  index within milliseconds, a process that missed the message within its poll interval.

No HTTP here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from casbin.persist.adapters.asyncio import AsyncAdapter
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import utcnow
from core.errors import Conflict, FieldIssue, NotFound, ValidationFailed
from policies.rules import RULES_MODEL_PATH, Rule, parse_rules, rule_from_line
from store.bus_messages import PolicyChanged
from store.models import PolicyRuleLine, PolicyShadowDiff, PolicyVersion
from store.unit_of_work import unit_of_work

LIVE = "live"
SHADOW = "shadow"
_COLS = ("v0", "v1", "v2", "v3", "v4", "v5")
MAX_DESCRIPTION = 500  # policies.rules.parse_rule's bound


# --- the Casbin adapter ---------------------------------------------------------------------
class AsyncRuleAdapter(AsyncAdapter):
    """pycasbin adapter over ``policy_rules`` for one org's rule set, inside the caller's
    session (and so its transaction). Only ``p`` lines are stored: team memberships (``g``)
    come from the manifests."""

    def __init__(self, session: AsyncSession, org_id: str, ruleset: str = LIVE):
        self.session = session
        self.org_id = org_id
        self.ruleset = ruleset

    def _where(self) -> Any:
        return (PolicyRuleLine.org_id == self.org_id, PolicyRuleLine.ruleset == self.ruleset)

    async def load_policy(self, model: Any) -> None:
        rows = (await self.session.execute(
            select(PolicyRuleLine).where(*self._where()).order_by(PolicyRuleLine.id))).scalars().all()
        for row in rows:
            values = [getattr(row, c) for c in _COLS]
            while values and values[-1] == "" and len(values) > 5:
                values.pop()
            model.add_policy("p", row.ptype, values[:5])

    async def save_policy(self, model: Any) -> bool:
        await self.session.execute(delete(PolicyRuleLine).where(*self._where()))
        ast = model.model.get("p", {}).get("p")
        for line in (ast.policy if ast is not None else []):
            await self.add_policy("p", "p", line)
        return True

    async def add_policy(self, sec: str, ptype: str, rule: list[str]) -> None:
        values = {c: (str(rule[i]) if i < len(rule) else "") for i, c in enumerate(_COLS)}
        self.session.add(PolicyRuleLine(org_id=self.org_id, ruleset=self.ruleset, ptype=ptype, **values))
        await self.session.flush()

    async def remove_policy(self, sec: str, ptype: str, rule: list[str]) -> None:
        conds = [PolicyRuleLine.ptype == ptype]
        conds += [getattr(PolicyRuleLine, c) == str(v) for c, v in zip(_COLS, rule)]
        await self.session.execute(delete(PolicyRuleLine).where(*self._where(), *conds))

    async def remove_filtered_policy(self, sec: str, ptype: str, field_index: int, *field_values: str) -> None:
        conds = [PolicyRuleLine.ptype == ptype]
        for i, v in enumerate(field_values):
            if v:
                conds.append(getattr(PolicyRuleLine, _COLS[field_index + i]) == str(v))
        await self.session.execute(delete(PolicyRuleLine).where(*self._where(), *conds))


def _model() -> Any:
    import casbin

    model = casbin.model.Model()
    model.load_model(str(RULES_MODEL_PATH))
    return model


async def load_rules(session: AsyncSession, org_id: str, ruleset: str = LIVE) -> list[Rule]:
    """The org's rule set, loaded through the adapter into a Casbin model, with each rule's
    description from the version that published the set (``_descriptions``)."""
    model = _model()
    await AsyncRuleAdapter(session, org_id, ruleset).load_policy(model)
    descriptions = await _descriptions(session, org_id, ruleset)
    out: list[Rule] = []
    for i, line in enumerate(model.model["p"]["p"].policy):
        try:
            rule = rule_from_line(line, f"stored.{i}")
        except ValidationFailed:  # validated on the way in; never trust twice
            continue
        description = descriptions.get(rule.id, "")
        out.append(dataclasses.replace(rule, description=description) if description else rule)
    return out


async def _descriptions(session: AsyncSession, org_id: str, ruleset: str) -> dict[str, str]:
    """Rule id -> description, from the newest version of ``ruleset``.

    A Casbin line holds what the enforcer needs (subject, pattern, effect, conditions, id), not
    the up to 500 characters of a description (the spare ``v5`` column is 255). Every change
    writes the lines and that version's rule list in one transaction (``_publish``), so the
    newest version describes exactly the stored lines; without this the next change (which
    reloads the lines) would publish the set without its descriptions."""
    latest = await _latest(session, org_id, ruleset)
    out: dict[str, str] = {}
    for item in (latest.rules or []) if latest is not None else []:
        if isinstance(item, dict):
            rule_id, text = item.get("id"), item.get("description")
            if isinstance(rule_id, str) and isinstance(text, str) and text and len(text) <= MAX_DESCRIPTION:
                out[rule_id] = text
    return out


async def save_rules(session: AsyncSession, org_id: str, rules: Iterable[Rule], ruleset: str = LIVE) -> None:
    model = _model()
    lines = [list(r.line()) for r in rules]
    if lines:
        model.add_policies("p", "p", lines)
    await AsyncRuleAdapter(session, org_id, ruleset).save_policy(model)


# --- versions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    change: str
    author: str
    created_at: datetime
    rules: list[dict[str, Any]]
    kind: str = LIVE


def _info(row: PolicyVersion) -> VersionInfo:
    return VersionInfo(row.version, row.change, row.author, row.created_at, list(row.rules or []), row.kind)


async def _latest(session: AsyncSession, org_id: str, kind: str = LIVE) -> PolicyVersion | None:
    return (await session.execute(
        select(PolicyVersion).where(PolicyVersion.org_id == org_id, PolicyVersion.kind == kind)
        .order_by(PolicyVersion.version.desc()).limit(1))).scalar_one_or_none()


async def current_version(session: AsyncSession, org_id: str) -> int:
    row = await _latest(session, org_id)
    return row.version if row is not None else 0


async def list_versions(session: AsyncSession, org_id: str, limit: int, offset: int) -> tuple[list[VersionInfo], int]:
    where = (PolicyVersion.org_id == org_id, PolicyVersion.kind == LIVE)
    total = (await session.execute(select(func.count()).select_from(PolicyVersion).where(*where))).scalar_one()
    rows = (await session.execute(
        select(PolicyVersion).where(*where).order_by(PolicyVersion.version.desc()).limit(limit).offset(offset)
    )).scalars().all()
    return [_info(r) for r in rows], int(total)


async def get_version(session: AsyncSession, org_id: str, version: int) -> VersionInfo | None:
    row = (await session.execute(select(PolicyVersion).where(
        PolicyVersion.org_id == org_id, PolicyVersion.kind == LIVE, PolicyVersion.version == version))).scalar_one_or_none()
    return _info(row) if row is not None else None


async def _publish(session: AsyncSession, org_id: str, rules: list[Rule], change: str, author: str,
                   kind: str = LIVE) -> int:
    """Inside the caller's transaction, after bump_org_version: write the set, record a version."""
    await save_rules(session, org_id, rules, kind)
    latest = await _latest(session, org_id, kind)
    version = (latest.version if latest is not None else 0) + 1
    session.add(PolicyVersion(org_id=org_id, kind=kind, version=version, rules=[r.to_dict() for r in rules],
                              change=change[:200], author=author[:300], created_at=utcnow()))
    await session.flush()
    return version


# (kind, details, session): runs inside the change's transaction, before the commit.
Audit = Callable[[str, dict[str, Any], AsyncSession], Awaitable[None]]


async def _change(runtime: Any, org_id: str, fn: Any, audit: Audit | None) -> Any:
    """Run ``fn(session)`` -> (result, audit kind, details) as one unit of work
    (store.unit_of_work): the org's state version bumped first, ``audit`` (the controller's
    audit-trail hook) inside the transaction, ``PolicyChanged`` announced after the commit."""
    async with unit_of_work(runtime, org_id, audit=audit) as uow:
        result, kind, details = await fn(uow.session)
        await uow.record(kind, details)
        uow.announce(PolicyChanged(org_id=org_id, version=uow.version))
    return result


async def add_rule(runtime: Any, org_id: str, rule: Rule, author: str, audit: Audit | None = None) -> tuple[int, Rule]:
    async def fn(session: AsyncSession) -> Any:
        rules = await load_rules(session, org_id)
        if any(r.id == rule.id for r in rules):
            raise Conflict(f"A rule with id '{rule.id}' exists.", [FieldIssue("id", "Already used in this organization.")])
        version = await _publish(session, org_id, [*rules, rule], f"add rule {rule.id}", author)
        return (version, rule), "policy.rule_added", {"version": version, "rule": rule.to_dict()}

    return await _change(runtime, org_id, fn, audit)  # type: ignore[no-any-return]


async def delete_rule(runtime: Any, org_id: str, rule_id: str, author: str, audit: Audit | None = None) -> int:
    async def fn(session: AsyncSession) -> Any:
        rules = await load_rules(session, org_id)
        kept = [r for r in rules if r.id != rule_id]
        if len(kept) == len(rules):
            raise NotFound(f"No rule '{rule_id}'.")
        version = await _publish(session, org_id, kept, f"delete rule {rule_id}", author)
        return version, "policy.rule_deleted", {"version": version, "rule_id": rule_id}

    return await _change(runtime, org_id, fn, audit)  # type: ignore[no-any-return]


async def replace_rules(runtime: Any, org_id: str, rules: list[Rule], author: str, change: str,
                        audit: Audit | None = None) -> int:
    async def fn(session: AsyncSession) -> Any:
        version = await _publish(session, org_id, rules, change, author)
        return version, "policy.replaced", {"version": version, "change": change, "rules": len(rules)}

    return await _change(runtime, org_id, fn, audit)  # type: ignore[no-any-return]


async def rollback(runtime: Any, org_id: str, to_version: int, author: str, audit: Audit | None = None) -> int:
    async def fn(session: AsyncSession) -> Any:
        target = await get_version(session, org_id, to_version)
        if target is None:
            raise NotFound(f"No policy version {to_version}.")
        rules = parse_rules(target.rules, "rules")
        version = await _publish(session, org_id, rules, f"rollback to version {to_version}", author)
        return version, "policy.rollback", {"version": version, "to_version": to_version}

    return await _change(runtime, org_id, fn, audit)  # type: ignore[no-any-return]


# --- shadow ---------------------------------------------------------------------------------
async def shadow_info(session: AsyncSession, org_id: str) -> VersionInfo | None:
    """The deployed shadow set (None when there is none)."""
    latest = await _latest(session, org_id, SHADOW)
    if latest is None or latest.change.startswith("drop"):
        return None
    return _info(latest)


async def deploy_shadow(runtime: Any, org_id: str, rules: list[Rule], author: str, audit: Audit | None = None) -> int:
    async def fn(session: AsyncSession) -> Any:
        version = await _publish(session, org_id, rules, "deploy shadow", author, SHADOW)
        return version, "policy.shadow_deployed", {"shadow_version": version, "rules": len(rules)}

    return await _change(runtime, org_id, fn, audit)  # type: ignore[no-any-return]


async def drop_shadow(runtime: Any, org_id: str, author: str, *, promote: bool, audit: Audit | None = None) -> int | None:
    """Remove the shadow set; with ``promote`` it becomes the next live version first."""

    async def fn(session: AsyncSession) -> Any:
        info = await shadow_info(session, org_id)
        if info is None:
            raise NotFound("No shadow rule set is deployed.")
        live_version = None
        if promote:
            rules = parse_rules(info.rules, "rules")
            live_version = await _publish(session, org_id, rules, f"promote shadow {info.version}", author)
        await session.execute(delete(PolicyRuleLine).where(
            PolicyRuleLine.org_id == org_id, PolicyRuleLine.ruleset == SHADOW))
        session.add(PolicyVersion(org_id=org_id, kind=SHADOW, version=info.version + 1, rules=[],
                                  change=("drop (promoted)" if promote else "drop"), author=author[:300],
                                  created_at=utcnow()))
        kind = "policy.shadow_promoted" if promote else "policy.shadow_dropped"
        return live_version, kind, {"shadow_version": info.version, "version": live_version}

    return await _change(runtime, org_id, fn, audit)  # type: ignore[no-any-return]


# --- what the gateway loads ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GatewayRules:
    live_version: int
    live: list[Rule]
    shadow_version: int | None
    shadow: list[Rule] | None


async def load_gateway_rules(session: AsyncSession, org_id: str) -> GatewayRules:
    async with session.begin():
        live_version = await current_version(session, org_id)
        live = await load_rules(session, org_id, LIVE) if live_version else []
        shadow = await shadow_info(session, org_id)
        shadow_rules = await load_rules(session, org_id, SHADOW) if shadow is not None else None
    return GatewayRules(live_version, live, shadow.version if shadow else None, shadow_rules)


# --- shadow diffs -----------------------------------------------------------------------------
async def insert_diffs(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    async with session.begin():
        for r in rows:
            session.add(PolicyShadowDiff(**r))


async def list_diffs(session: AsyncSession, org_id: str, limit: int, offset: int,
                     shadow_version: int | None = None) -> tuple[list[PolicyShadowDiff], int]:
    where = [PolicyShadowDiff.org_id == org_id]
    if shadow_version is not None:
        where.append(PolicyShadowDiff.shadow_version == shadow_version)
    total = (await session.execute(select(func.count()).select_from(PolicyShadowDiff).where(*where))).scalar_one()
    rows = (await session.execute(select(PolicyShadowDiff).where(*where).order_by(PolicyShadowDiff.id.desc())
                                  .limit(limit).offset(offset))).scalars().all()
    return list(rows), int(total)

