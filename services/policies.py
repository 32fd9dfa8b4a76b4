"""Policies: an organization's rules, their versions and rollback, explain, test runs and
shadow deployments.

Every change is one unit of work in store.policy_rules (a new policy version, its audit event
inside the transaction, ``PolicyChanged`` announced after the commit); this module validates
what arrives (``policies.rules``: every problem named by its dotted path). Explain and test runs
are the decision engine's (gateway/policy_eval.py): they change nothing. No HTTP here.
"""
from __future__ import annotations

import secrets
from typing import Any

from audit.changes import ChangeContext
from core.errors import FieldIssue, NotFound, ValidationFailed
from policies.rules import Rule, parse_rule, parse_rules
from store import policy_rules as repo
from store.runtime import Runtime


def object_body(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed(details=[FieldIssue("body", "Must be a JSON object.")])
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise ValidationFailed(details=[FieldIssue(str(k)[:64], "Unknown field.") for k in unknown])
    return body


# --- rules and versions --------------------------------------------------------------------
async def live_rules(runtime: Runtime, org_id: str) -> tuple[int, list[Rule]]:
    async with runtime.sessions() as session:
        version = await repo.current_version(session, org_id)
        rules = await repo.load_rules(session, org_id)
    return version, rules


async def add_rule(runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, body: Any) -> tuple[int, Rule]:
    """``body``: one rule as JSON; without an id it gets a random one."""
    rule, issues = parse_rule(body, "", auto_id=f"r-{secrets.token_hex(4)}")
    if rule is None:
        raise ValidationFailed("The rule failed validation.", issues)
    return await repo.add_rule(runtime, org_id, rule, actor, ctx.hook)


async def delete_rule(runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, rule_id: str) -> int:
    return await repo.delete_rule(runtime, org_id, rule_id, actor, ctx.hook)


async def versions(runtime: Runtime, org_id: str, limit: int, offset: int) -> tuple[list[repo.VersionInfo], int]:
    async with runtime.sessions() as session:
        return await repo.list_versions(session, org_id, limit, offset)


async def version(runtime: Runtime, org_id: str, number: int) -> repo.VersionInfo:
    async with runtime.sessions() as session:
        v = await repo.get_version(session, org_id, number)
    if v is None:
        raise NotFound()
    return v


async def rollback(runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, to_version: int) -> repo.VersionInfo:
    """A new version equal to ``to_version``; the new version as stored."""
    new = await repo.rollback(runtime, org_id, to_version, actor, ctx.hook)
    return await version(runtime, org_id, new)


# --- shadow --------------------------------------------------------------------------------
async def shadow(runtime: Runtime, org_id: str) -> repo.VersionInfo:
    async with runtime.sessions() as session:
        info = await repo.shadow_info(session, org_id)
    if info is None:
        raise NotFound("No shadow rule set is deployed.")
    return info


async def deploy_shadow(runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, body: Any) -> repo.VersionInfo:
    """``body``: ``{rules}``, the candidate set that decides beside the live one."""
    rules = parse_rules(object_body(body, ("rules",)).get("rules"), "rules")
    await repo.deploy_shadow(runtime, org_id, rules, actor, ctx.hook)
    return await shadow(runtime, org_id)


async def diffs(runtime: Runtime, org_id: str, limit: int, offset: int) -> tuple[list[Any], int]:
    async with runtime.sessions() as session:
        rows, total = await repo.list_diffs(session, org_id, limit, offset)
    return list(rows), total


async def drop_shadow(runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, *, promote: bool) -> int | None:
    """Remove the shadow set; with ``promote`` it becomes the next live version first (its
    number is returned)."""
    return await repo.drop_shadow(runtime, org_id, actor, promote=promote, audit=ctx.hook)
