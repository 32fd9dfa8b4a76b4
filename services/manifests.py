"""Manifests: register, validate, read, and the five state transitions.

A transition (approve, reject, suspend, reactivate, revoke) is one function: check the texts,
then one unit of work (store.unit_of_work: the org version bump, the conditional update and its
events from store.manifests, the audit event inside the transaction; after the commit, the
announcement to every gateway). The actions differ only in what store.manifests.TRANSITIONS
allows and, for approve, in the approved capabilities. No HTTP here: errors are core.errors,
the audit context is a ``ChangeContext``.
"""
from __future__ import annotations

import re
from typing import Any

from audit.changes import ChangeContext
from core.clock import utcnow
from core.errors import Conflict, FieldIssue, NotFound, Unprocessable, ValidationFailed
from core.ids import UAPK_ID
from core.text import is_clean, text_issue
from policies import manifest as doc_rules
from policies.capabilities import is_valid_pattern, matches_any
from store import manifests as repo
from store.bus_messages import ManifestChanged
from store.models import Manifest, ManifestEvent
from store.runtime import Runtime
from store.unit_of_work import unit_of_work

MAX_REASON = 1000
MAX_NOTES = 2000
MANIFEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)


def known_manifest_id(manifest_id: str) -> str:
    """Not an id we could have issued: the same 404 as a missing one (and nothing odd
    reaches SQL)."""
    if not MANIFEST_ID.fullmatch(manifest_id):
        raise NotFound()
    return manifest_id


# --- reading -------------------------------------------------------------------------------
async def get(runtime: Runtime, org_id: str, manifest_id: str) -> Manifest:
    async with runtime.sessions() as session:
        m = await repo.get(session, org_id, known_manifest_id(manifest_id))
    if m is None:
        raise NotFound()
    return m


async def by_uapk(runtime: Runtime, org_id: str, uapk_id: str) -> Manifest:
    """The agent's active manifest, else its newest."""
    if not UAPK_ID.match(uapk_id):
        raise NotFound()
    async with runtime.sessions() as session:
        m = await repo.by_uapk(session, org_id, uapk_id)
    if m is None:
        raise NotFound()
    return m


async def list_manifests(runtime: Runtime, org_id: str, *, status: str | None, team: str | None,
                         limit: int, offset: int) -> tuple[list[Manifest], int]:
    if team is not None and "\x00" in team:  # PostgreSQL cannot even compare it
        raise ValidationFailed("Query parameters failed validation.",
                               [FieldIssue("team", f"Must be 1 to {doc_rules.MAX_TEXT} characters.")])
    async with runtime.sessions() as session:
        rows, total = await repo.list_manifests(session, org_id, status=status, team=team, limit=limit, offset=offset)
    return list(rows), total


async def history(runtime: Runtime, org_id: str, manifest_id: str) -> tuple[str, list[Manifest], dict[str, list[ManifestEvent]]]:
    """(uapk id, every version of the agent newest first, each version's events)."""
    async with runtime.sessions() as session:
        m = await repo.get(session, org_id, known_manifest_id(manifest_id))
        if m is None:
            raise NotFound()
        rows = await repo.versions(session, org_id, m.uapk_id)
        events = await repo.events_of(session, org_id, [r.id for r in rows])
    return m.uapk_id, list(rows), events


# --- validate and register -----------------------------------------------------------------
def validate(document: Any) -> doc_rules.Report:
    if not isinstance(document, dict):
        raise ValidationFailed("Request body failed validation.", [FieldIssue("body", "The manifest must be a JSON object.")])
    return doc_rules.check_document(document)


async def register(runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, document: Any) -> Manifest:
    """A new pending manifest (a new version of its agent), audited and announced. ``actor``
    is the name stored with the change (a key's name or a user's email)."""
    report = doc_rules.check_document(document)
    if not report.valid:
        raise ValidationFailed("Manifest failed validation.", [FieldIssue(p.field, p.message) for p in report.errors])
    assert report.manifest_hash is not None
    async with unit_of_work(runtime, org_id, audit=ctx.hook) as uow:
        try:
            m = await repo.register(uow.session, org_id, document, report.manifest_hash, actor, utcnow())
        except repo.DuplicateVersion:
            raise Conflict(
                f"Version {document['agent']['version']} of agent '{document['agent']['id']}' is already registered.",
                [FieldIssue("agent.version", "This version is already registered.")],
            ) from None
        await uow.record("manifest.registered", {
            "manifest_id": m.id, "version": m.version, "manifest_hash": m.manifest_hash, "to_status": m.status,
        }, uapk_id=m.uapk_id)
        uow.announce(ManifestChanged(org_id=org_id, version=uow.version, uapk_id=m.uapk_id, manifest_id=m.id,
                                     status=m.status))
    return m


# --- transitions ---------------------------------------------------------------------------
def _text_issues(issues: list[FieldIssue], field: str, value: str | None, max_len: int) -> None:
    if value is None:
        return
    if len(value) > max_len:
        issues.append(FieldIssue(field, f"Must be at most {max_len} characters."))
    elif (problem := text_issue(value, multiline=True)) is not None:  # the one text rule (core/text.py)
        issues.append(FieldIssue(field, problem))


def check_texts(reason: str | None, notes: str | None) -> None:
    """A reason and notes are read by people (history, audit trail): lengths and the text
    rule. Several lines are fine."""
    issues: list[FieldIssue] = []
    _text_issues(issues, "reason", reason, MAX_REASON)
    _text_issues(issues, "notes", notes, MAX_NOTES)
    if issues:
        raise ValidationFailed("Request body failed validation.", issues)


def _conflict(exc: repo.TransitionRefused) -> Conflict:
    allowed, _ = repo.TRANSITIONS[exc.action]
    starts = " or ".join(allowed) if len(allowed) < 3 else "any state but revoked"
    return Conflict(
        f"Manifest is {exc.current}; cannot {exc.action} it (allowed from {starts}).",
        [FieldIssue("status", f"Current state: {exc.current}.")],
    )


def _within_request(cap: str, requested: list[str]) -> bool:
    if cap in requested:
        return True
    # ``matches`` compares a ``*`` in ``cap`` literally, so it only passes when each requested
    # segment is ``*`` or equal: the requested pattern covers everything ``cap`` covers.
    return is_valid_pattern(cap) and is_clean(cap) and matches_any(requested, cap)


def approved_subset(m: Manifest, wanted: list[str]) -> list[str]:
    """The capabilities an approver grants: each one requested, or a narrower form of a
    requested wildcard (crm:read or crm:* when *:* was requested); never anything broader.
    Duplicates dropped, order kept."""
    if not wanted:
        raise ValidationFailed(
            "Request body failed validation.",
            [FieldIssue("approved_capabilities", "Must name at least one capability; reject the manifest instead.")],
        )
    if len(wanted) > doc_rules.MAX_CAPABILITIES:
        raise ValidationFailed(
            "Request body failed validation.",
            [FieldIssue("approved_capabilities", f"At most {doc_rules.MAX_CAPABILITIES} entries.")],
        )
    missing = [(i, cap) for i, cap in enumerate(wanted) if not _within_request(cap, m.requested)]
    if missing:
        names = ", ".join(cap[:128] for _, cap in missing[:10])
        raise Unprocessable(
            f"Cannot approve capabilities that were not requested: {names}.",
            [FieldIssue(f"approved_capabilities.{i}", f"{cap[:128]} was not requested.") for i, cap in missing[:100]],
        )
    return list(dict.fromkeys(wanted))


async def transition(
    runtime: Runtime,
    ctx: ChangeContext,
    actor: str,
    org_id: str,
    manifest_id: str,
    action: str,
    *,
    reason: str | None = None,
    notes: str | None = None,
    approved_capabilities: list[str] | None = None,
) -> repo.TransitionResult:
    """One state change in one unit of work: org version bump, conditional update, events,
    audit event; after the commit, the announcement to every gateway. ``reason`` is
    not taken by approve and reactivate (their bodies have none)."""
    if action not in repo.TRANSITIONS:
        raise ValueError(f"unknown manifest action {action!r}")
    manifest_id = known_manifest_id(manifest_id)
    check_texts(reason, notes)
    now = utcnow()
    async with unit_of_work(runtime, org_id, audit=ctx.hook) as uow:
        session = uow.session
        approved: list[str] | None = None
        if action == "approve":
            m = await repo.get(session, org_id, manifest_id)
            if m is None:
                raise NotFound()
            if m.status != "pending":
                raise _conflict(repo.TransitionRefused(action, m.status))
            if approved_capabilities is not None:
                approved = approved_subset(m, approved_capabilities)
        try:
            result = await repo.transition(
                session, org_id, manifest_id, action, actor, now, reason=reason, notes=notes, approved=approved
            )
        except repo.TransitionRefused as exc:
            raise _conflict(exc) from None
        if result is None:
            raise NotFound()
        changed = result.manifest
        await uow.record(f"manifest.{action}", {
            "manifest_id": changed.id, "version": changed.version, "to_status": changed.status,
            "approved": list(changed.approved) if action == "approve" else None,
            "superseded": [x.id for x in result.superseded] or None, "reason": reason,
        }, uapk_id=changed.uapk_id)
        uow.announce(ManifestChanged(org_id=org_id, version=uow.version, uapk_id=changed.uapk_id,
                                     manifest_id=changed.id, status=changed.status))
    return result
