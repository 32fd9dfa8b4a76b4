"""The manifests API on the wire: request bodies, responses, and the conversion of stored
manifests into responses. No behaviour: services/manifests.py decides, api/manifests.py routes.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.clock import isoformat
from core.ids import UapkId
from core.settings import Settings
from httpkit.openapi import request_body
from policies import manifest as doc_rules
from store import manifests as repo
from store.models import Manifest, ManifestEvent


# --- request types -----------------------------------------------------------------------
class Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class ManifestApproveRequest(Strict):
    approved_capabilities: list[str] | None = None
    notes: str | None = None


class ReasonRequest(Strict):
    reason: str | None = None
    notes: str | None = None


class NotesRequest(Strict):
    notes: str | None = None


# The manifest document (register, validate), for the OpenAPI document only: the server
# decodes any JSON value and policies.manifest.check_document checks every field and names
# each problem (docs/manifests.md, "Validation rules"). The constraints below are the ones
# check_document enforces (it checks more: blank names, control characters, metadata size).
Capability = Annotated[str, msgspec.Meta(max_length=128, pattern=r"\A(?:[a-z0-9_-]+|\*):(?:[a-z0-9_-]+|\*)\Z")]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=doc_rules.MAX_TEXT)]


class ManifestAgent(Strict):
    id: UapkId
    name: ShortText
    version: Annotated[str, msgspec.Meta(max_length=doc_rules.MAX_VERSION_LEN, pattern="\\A" + doc_rules.SEMVER.pattern + "\\Z")]
    description: Annotated[str, msgspec.Meta(max_length=doc_rules.MAX_DESCRIPTION)] | None = None
    organization: Annotated[str, msgspec.Meta(max_length=doc_rules.MAX_TEXT)] | None = None
    team: Annotated[str, msgspec.Meta(max_length=doc_rules.MAX_TEXT)] | None = None


class ManifestCapabilities(Strict):
    requested: Annotated[list[Capability], msgspec.Meta(min_length=1, max_length=doc_rules.MAX_CAPABILITIES)]


Rate = Annotated[int, msgspec.Meta(ge=1, le=doc_rules.MAX_RATE)]


class ManifestConstraints(Strict):
    max_actions_per_hour: Rate | msgspec.UnsetType = msgspec.UNSET
    max_actions_per_day: Rate | msgspec.UnsetType = msgspec.UNSET
    require_human_approval: Annotated[list[Capability], msgspec.Meta(max_length=doc_rules.MAX_HUMAN_APPROVAL)] | None = None
    require_capability_token: bool | msgspec.UnsetType = msgspec.UNSET


class ManifestDocument(Strict):
    """A UAPK manifest (docs/manifests.md). Unknown fields at any level are refused;
    ``metadata`` is free-form (at most 16 KiB as canonical JSON, 16 levels deep)."""

    version: Literal["1.0"]
    agent: ManifestAgent
    capabilities: ManifestCapabilities
    constraints: ManifestConstraints | None = None
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


MANIFEST_BODY = request_body(ManifestDocument, decode=False, description=(
    "The manifest document. Every problem is reported at once, each named by its dotted path."))


ManifestStatus = Literal[repo.STATUSES]  # type: ignore[valid-type]


# --- response types ----------------------------------------------------------------------
class Capabilities(msgspec.Struct):
    requested: list[str]
    approved: list[str]


class AgentSummary(msgspec.Struct):
    id: str
    name: str
    version: str


class Registered(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    manifest_hash: str
    agent: AgentSummary
    capabilities: Capabilities
    created_at: str


class ListAgent(msgspec.Struct):
    name: str
    version: str
    team: str | None


class ListItem(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    agent: ListAgent
    capabilities_count: int
    created_at: str
    approved_at: str | None


class ManifestList(msgspec.Struct):
    items: list[ListItem]
    total: int


class Limits(msgspec.Struct):
    max_actions_per_hour: int
    max_actions_per_day: int


class ManifestDetail(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    version: str
    status: str
    manifest_hash: str
    agent: dict[str, Any]
    capabilities: Capabilities
    constraints: dict[str, Any]
    metadata: dict[str, Any]
    effective_limits: Limits
    created_by: str
    created_at: str
    approved_by: str | None
    approved_at: str | None
    rejected_by: str | None
    rejected_at: str | None
    suspended_by: str | None
    suspended_at: str | None
    reactivated_by: str | None
    reactivated_at: str | None
    revoked_by: str | None
    revoked_at: str | None
    superseded_at: str | None
    reason: str | None
    notes: str | None


class Approved(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    capabilities: Capabilities
    approved_by: str
    approved_at: str
    notes: str | None
    superseded: list[str]


class Rejected(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    rejected_by: str
    rejected_at: str
    reason: str | None
    notes: str | None


class Suspended(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    suspended_by: str
    suspended_at: str
    reason: str | None
    notes: str | None


class Reactivated(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    reactivated_by: str
    reactivated_at: str
    notes: str | None


class Revoked(msgspec.Struct):
    manifest_id: str
    uapk_id: str
    status: str
    revoked_by: str
    revoked_at: str
    reason: str | None
    notes: str | None


class Issue(msgspec.Struct):
    field: str
    message: str


class ValidateResult(msgspec.Struct, omit_defaults=True):
    valid: bool
    errors: list[Issue]
    warnings: list[Issue]
    manifest_hash: str | None = None


class EventOut(msgspec.Struct):
    from_status: str | None
    to_status: str
    actor: str
    at: str
    reason: str | None
    notes: str | None


class HistoryItem(msgspec.Struct):
    manifest_id: str
    version: str
    manifest_hash: str
    status: str
    changed_at: str
    changed_by: str
    changes: list[str]
    events: list[EventOut]


class History(msgspec.Struct):
    uapk_id: str
    items: list[HistoryItem]


# --- stored manifests as responses ---------------------------------------------------------
def _ts(value: Any) -> str:
    return isoformat(value) or ""


def _capabilities(m: Manifest) -> Capabilities:
    return Capabilities(requested=list(m.requested), approved=list(m.approved))


def registered(m: Manifest) -> Registered:
    agent = m.document["agent"]
    return Registered(
        manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, manifest_hash=m.manifest_hash,
        agent=AgentSummary(id=agent["id"], name=agent["name"], version=agent["version"]),
        capabilities=_capabilities(m), created_at=_ts(m.created_at),
    )


def validated(report: doc_rules.Report) -> ValidateResult:
    return ValidateResult(
        valid=report.valid,
        errors=[Issue(p.field, p.message) for p in report.errors],
        warnings=[Issue(p.field, p.message) for p in report.warnings],
        manifest_hash=report.manifest_hash if report.valid else None,
    )


def listed(rows: list[Manifest], total: int) -> ManifestList:
    return ManifestList(
        items=[
            ListItem(
                manifest_id=m.id, uapk_id=m.uapk_id, status=m.status,
                agent=ListAgent(name=str(m.document["agent"]["name"]), version=m.version, team=m.team),
                capabilities_count=len(m.requested), created_at=_ts(m.created_at), approved_at=isoformat(m.approved_at),
            )
            for m in rows
        ],
        total=total,
    )


def detail(m: Manifest, settings: Settings) -> ManifestDetail:
    doc = m.document
    limits = doc_rules.effective_limits(doc, settings.default_max_actions_per_hour, settings.default_max_actions_per_day)
    return ManifestDetail(
        manifest_id=m.id, uapk_id=m.uapk_id, version=m.version, status=m.status, manifest_hash=m.manifest_hash,
        agent=dict(doc.get("agent") or {}), capabilities=_capabilities(m),
        constraints=dict(doc.get("constraints") or {}), metadata=dict(doc.get("metadata") or {}),
        effective_limits=Limits(**limits),
        created_by=m.created_by, created_at=_ts(m.created_at),
        approved_by=m.approved_by, approved_at=isoformat(m.approved_at),
        rejected_by=m.rejected_by, rejected_at=isoformat(m.rejected_at),
        suspended_by=m.suspended_by, suspended_at=isoformat(m.suspended_at),
        reactivated_by=m.reactivated_by, reactivated_at=isoformat(m.reactivated_at),
        revoked_by=m.revoked_by, revoked_at=isoformat(m.revoked_at),
        superseded_at=isoformat(m.superseded_at), reason=m.reason, notes=m.notes,
    )


def _event_out(e: ManifestEvent) -> EventOut:
    return EventOut(from_status=e.from_status, to_status=e.to_status, actor=e.actor, at=_ts(e.at), reason=e.reason, notes=e.notes)


def history(uapk_id: str, rows: list[Manifest], events: dict[str, list[ManifestEvent]]) -> History:
    """``rows`` newest first; each version's changes are against the one before it."""
    items: list[HistoryItem] = []
    for i, row in enumerate(rows):
        previous = rows[i + 1].document if i + 1 < len(rows) else None
        items.append(HistoryItem(
            manifest_id=row.id, version=row.version, manifest_hash=row.manifest_hash, status=row.status,
            changed_at=_ts(row.created_at), changed_by=row.created_by,
            changes=doc_rules.diff_lines(previous, row.document),
            events=[_event_out(e) for e in events.get(row.id, [])],
        ))
    return History(uapk_id=uapk_id, items=items)


# One response per transition: what the action stamped on the manifest.
def approved(result: repo.TransitionResult) -> Approved:
    m = result.manifest
    return Approved(
        manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, capabilities=_capabilities(m),
        approved_by=m.approved_by or "", approved_at=_ts(m.approved_at), notes=m.notes,
        superseded=[s.id for s in result.superseded],
    )


def rejected(m: Manifest) -> Rejected:
    return Rejected(manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, rejected_by=m.rejected_by or "",
                    rejected_at=_ts(m.rejected_at), reason=m.reason, notes=m.notes)


def suspended(m: Manifest) -> Suspended:
    return Suspended(manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, suspended_by=m.suspended_by or "",
                     suspended_at=_ts(m.suspended_at), reason=m.reason, notes=m.notes)


def reactivated(m: Manifest) -> Reactivated:
    return Reactivated(manifest_id=m.id, uapk_id=m.uapk_id, status=m.status,
                       reactivated_by=m.reactivated_by or "", reactivated_at=_ts(m.reactivated_at), notes=m.notes)


def revoked(m: Manifest) -> Revoked:
    return Revoked(manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, revoked_by=m.revoked_by or "",
                   revoked_at=_ts(m.revoked_at), reason=m.reason, notes=m.notes)
