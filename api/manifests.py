"""Manifests API: register, list, get, approve/reject/suspend/reactivate/revoke, look up by
UAPK id, validate and history. Thin: validation is policies.manifest, SQL is store.manifests."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from core.clock import isoformat, utcnow
from core.errors import Conflict, FieldIssue, NotFound, Unprocessable, ValidationFailed
from audit.changes import record_change
from httpkit.auth import Caller, admit
from httpkit.openapi import declared_body, request_body
from httpkit.pagination import Page, pagination
from policies import manifest as doc_rules
from policies.capabilities import is_valid_pattern, matches_any
from store import changes
from store import manifests as repo
from store.bus_messages import ManifestChanged
from store.models import Manifest, ManifestEvent
from store.runtime import Runtime

T = TypeVar("T")

LIST_DEFAULT_LIMIT = 50
MAX_REASON = 1000
MAX_NOTES = 2000
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)


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
    id: Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9-]{1,62}\Z")]
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


# --- helpers -----------------------------------------------------------------------------
def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _ts(value: Any) -> str:
    return isoformat(value) or ""


async def _body(request: Request[Any, Any, Any], kind: type[T]) -> T:
    """The route's declared body (``request_body``), read after the role check."""
    body = await declared_body(request)
    assert isinstance(body, kind)
    return body


def _note_issues(issues: list[FieldIssue], field: str, value: str | None, max_len: int) -> None:
    if value is None:
        return
    if len(value) > max_len:
        issues.append(FieldIssue(field, f"Must be at most {max_len} characters."))
    elif any((ord(c) < 32 and c not in "\n\t\r") or ord(c) == 127 for c in value):
        issues.append(FieldIssue(field, "Must not contain control characters."))


def _check_texts(reason: str | None, notes: str | None) -> None:
    issues: list[FieldIssue] = []
    _note_issues(issues, "reason", reason, MAX_REASON)
    _note_issues(issues, "notes", notes, MAX_NOTES)
    if issues:
        raise ValidationFailed("Request body failed validation.", issues)


def _manifest_id(manifest_id: str) -> str:
    # Not an id we could have issued: the same 404 as a missing one (and nothing odd reaches SQL).
    if not _UUID.fullmatch(manifest_id):
        raise NotFound()
    return manifest_id


def _conflict(exc: repo.TransitionRefused) -> Conflict:
    allowed, _ = repo.TRANSITIONS[exc.action]
    starts = " or ".join(allowed) if len(allowed) < 3 else "any state but revoked"
    return Conflict(
        f"Manifest is {exc.current}; cannot {exc.action} it (allowed from {starts}).",
        [FieldIssue("status", f"Current state: {exc.current}.")],
    )


def _detail(m: Manifest, runtime: Runtime) -> ManifestDetail:
    doc = m.document
    s = runtime.settings
    return ManifestDetail(
        manifest_id=m.id, uapk_id=m.uapk_id, version=m.version, status=m.status, manifest_hash=m.manifest_hash,
        agent=dict(doc.get("agent") or {}),
        capabilities=Capabilities(requested=list(m.requested), approved=list(m.approved)),
        constraints=dict(doc.get("constraints") or {}), metadata=dict(doc.get("metadata") or {}),
        effective_limits=Limits(**doc_rules.effective_limits(doc, s.default_max_actions_per_hour, s.default_max_actions_per_day)),
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


async def _transition(
    request: Request[Any, Any, Any],
    caller: Caller,
    manifest_id: str,
    action: str,
    *,
    reason: str | None = None,
    notes: str | None = None,
    approved_capabilities: list[str] | None = None,
) -> repo.TransitionResult:
    """One state change in one transaction: conditional update, events, org version bump;
    then, after the commit, the announcement to every gateway."""
    runtime = _runtime(request)
    org_id = caller.org_id
    now = utcnow()
    async with runtime.sessions() as session, session.begin():
        approved: list[str] | None = None
        if action == "approve":
            m = await repo.get(session, org_id, manifest_id)
            if m is None:
                raise NotFound()
            if m.status != "pending":
                raise _conflict(repo.TransitionRefused(action, m.status))
            if approved_capabilities is not None:
                approved = _approved_subset(m, approved_capabilities)
        try:
            result = await repo.transition(
                session, org_id, manifest_id, action, caller.actor, now, reason=reason, notes=notes, approved=approved
            )
        except repo.TransitionRefused as exc:
            raise _conflict(exc) from None
        if result is None:
            raise NotFound()
        await record_change(request, caller, f"manifest.{action}", uapk_id=result.manifest.uapk_id, details={"manifest_id": result.manifest.id, "version": result.manifest.version, "to_status": result.manifest.status, "approved": list(result.manifest.approved) if action == "approve" else None, "superseded": [x.id for x in result.superseded] or None, "reason": reason})
        version = await changes.bump_org_version(session, org_id)
    await changes.announce(runtime.bus, ManifestChanged(
        org_id=org_id, version=version, uapk_id=result.manifest.uapk_id,
        manifest_id=result.manifest.id, status=result.manifest.status,
    ))
    return result


def _within_request(cap: str, requested: list[str]) -> bool:
    if cap in requested:
        return True
    # ``matches`` compares a ``*`` in ``cap`` literally, so it only passes when each requested
    # segment is ``*`` or equal: the requested pattern covers everything ``cap`` covers.
    return is_valid_pattern(cap) and not _bad_text(cap) and matches_any(requested, cap)


def _bad_text(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def _approved_subset(m: Manifest, wanted: list[str]) -> list[str]:
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
    # A requested capability, or a narrower form of a requested wildcard (crm:read or crm:*
    # when *:* was requested); never anything broader than what was asked for.
    missing = [(i, cap) for i, cap in enumerate(wanted) if not _within_request(cap, m.requested)]
    if missing:
        names = ", ".join(cap[:128] for _, cap in missing[:10])
        raise Unprocessable(
            f"Cannot approve capabilities that were not requested: {names}.",
            [FieldIssue(f"approved_capabilities.{i}", f"{cap[:128]} was not requested.") for i, cap in missing[:100]],
        )
    out: list[str] = []
    for cap in wanted:
        if cap not in out:
            out.append(cap)
    return out


# --- the controller ----------------------------------------------------------------------
class ManifestController(Controller):
    path = "/api/v1/orgs/{org_id:str}/manifests"
    tags = ["manifests"]

    @post("/", status_code=HTTP_201_CREATED, summary="Register a manifest (the body is the manifest document)",
          opt=MANIFEST_BODY)
    async def register(self, request: Request[Any, Any, Any], org_id: str) -> Registered:
        caller = await admit(request, org_id, "manifests", "register", tier="heavy")
        document = await declared_body(request)
        report = doc_rules.check_document(document)
        if not report.valid:
            raise ValidationFailed(
                "Manifest failed validation.", [FieldIssue(p.field, p.message) for p in report.errors]
            )
        assert report.manifest_hash is not None
        runtime = _runtime(request)
        now = utcnow()
        async with runtime.sessions() as session, session.begin():
            try:
                m = await repo.register(session, org_id, document, report.manifest_hash, caller.actor, now)
            except repo.DuplicateVersion:
                raise Conflict(
                    f"Version {document['agent']['version']} of agent '{document['agent']['id']}' is already registered.",
                    [FieldIssue("agent.version", "This version is already registered.")],
                ) from None
            await record_change(request, caller, "manifest.registered", uapk_id=m.uapk_id, details={"manifest_id": m.id, "version": m.version, "manifest_hash": m.manifest_hash, "to_status": m.status})
            version = await changes.bump_org_version(session, org_id)
        await changes.announce(runtime.bus, ManifestChanged(org_id=org_id, version=version, uapk_id=m.uapk_id, manifest_id=m.id, status=m.status))
        agent = document["agent"]
        return Registered(
            manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, manifest_hash=m.manifest_hash,
            agent=AgentSummary(id=agent["id"], name=agent["name"], version=agent["version"]),
            capabilities=Capabilities(requested=list(m.requested), approved=list(m.approved)),
            created_at=_ts(m.created_at),
        )

    @post("/validate", status_code=HTTP_200_OK, summary="Validate a manifest without registering it",
          opt=MANIFEST_BODY)
    async def validate(self, request: Request[Any, Any, Any], org_id: str) -> ValidateResult:
        await admit(request, org_id, "manifests", "register", tier="heavy")
        document = await declared_body(request)
        if not isinstance(document, dict):
            raise ValidationFailed("Request body failed validation.", [FieldIssue("body", "The manifest must be a JSON object.")])
        report = doc_rules.check_document(document)
        return ValidateResult(
            valid=report.valid,
            errors=[Issue(p.field, p.message) for p in report.errors],
            warnings=[Issue(p.field, p.message) for p in report.warnings],
            manifest_hash=report.manifest_hash if report.valid else None,
        )

    @get("/", summary="List manifests (filters: status, team; limit/offset)",
         dependencies=pagination(LIST_DEFAULT_LIMIT))
    async def list_manifests(
        self, request: Request[Any, Any, Any], org_id: str, page: Page,
        status: Annotated[ManifestStatus | None, Parameter(description="Only manifests in this state.")] = None,
        team: Annotated[str | None, Parameter(min_length=1, max_length=doc_rules.MAX_TEXT,
                                              description="Exact match on agent.team.")] = None,
    ) -> ManifestList:
        await admit(request, org_id, "manifests", "read")
        if team is not None and "\x00" in team:
            raise ValidationFailed("Query parameters failed validation.",
                                   [FieldIssue("team", f"Must be 1 to {doc_rules.MAX_TEXT} characters.")])
        async with _runtime(request).sessions() as session:
            rows, total = await repo.list_manifests(
                session, org_id, status=status, team=team, limit=page.limit, offset=page.offset
            )
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

    @get("/by-uapk/{uapk_id:str}", summary="The agent's active manifest, else its newest")
    async def by_uapk(self, request: Request[Any, Any, Any], org_id: str, uapk_id: str) -> ManifestDetail:
        await admit(request, org_id, "manifests", "read")
        if not doc_rules.AGENT_ID.fullmatch(uapk_id):
            raise NotFound()
        runtime = _runtime(request)
        async with runtime.sessions() as session:
            m = await repo.by_uapk(session, org_id, uapk_id)
        if m is None:
            raise NotFound()
        return _detail(m, runtime)

    @get("/{manifest_id:str}", summary="Full manifest details")
    async def get_manifest(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> ManifestDetail:
        await admit(request, org_id, "manifests", "read")
        runtime = _runtime(request)
        async with runtime.sessions() as session:
            m = await repo.get(session, org_id, _manifest_id(manifest_id))
        if m is None:
            raise NotFound()
        return _detail(m, runtime)

    @get("/{manifest_id:str}/history", summary="Every version of this manifest's agent, newest first")
    async def history(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> History:
        await admit(request, org_id, "manifests", "read")
        async with _runtime(request).sessions() as session:
            m = await repo.get(session, org_id, _manifest_id(manifest_id))
            if m is None:
                raise NotFound()
            rows = await repo.versions(session, org_id, m.uapk_id)
            events = await repo.events_of(session, org_id, [r.id for r in rows])
        items: list[HistoryItem] = []
        for i, row in enumerate(rows):
            previous = rows[i + 1].document if i + 1 < len(rows) else None
            items.append(
                HistoryItem(
                    manifest_id=row.id, version=row.version, manifest_hash=row.manifest_hash, status=row.status,
                    changed_at=_ts(row.created_at), changed_by=row.created_by,
                    changes=doc_rules.diff_lines(previous, row.document),
                    events=[_event_out(e) for e in events.get(row.id, [])],
                )
            )
        return History(uapk_id=m.uapk_id, items=items)

    @post("/{manifest_id:str}/approve", status_code=HTTP_200_OK, summary="Approve a pending manifest",
          opt=request_body(ManifestApproveRequest, required=False))
    async def approve(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> Approved:
        caller = await admit(request, org_id, "manifests", "approve")
        mid = _manifest_id(manifest_id)
        data = await _body(request, ManifestApproveRequest)
        _check_texts(None, data.notes)
        result = await _transition(request, caller, mid, "approve", notes=data.notes, approved_capabilities=data.approved_capabilities)
        m = result.manifest
        return Approved(
            manifest_id=m.id, uapk_id=m.uapk_id, status=m.status,
            capabilities=Capabilities(requested=list(m.requested), approved=list(m.approved)),
            approved_by=m.approved_by or "", approved_at=_ts(m.approved_at), notes=m.notes,
            superseded=[s.id for s in result.superseded],
        )

    @post("/{manifest_id:str}/reject", status_code=HTTP_200_OK, summary="Reject a pending manifest",
          opt=request_body(ReasonRequest, required=False))
    async def reject(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> Rejected:
        caller = await admit(request, org_id, "manifests", "reject")
        mid = _manifest_id(manifest_id)
        data = await _body(request, ReasonRequest)
        _check_texts(data.reason, data.notes)
        m = (await _transition(request, caller, mid, "reject", reason=data.reason, notes=data.notes)).manifest
        return Rejected(
            manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, rejected_by=m.rejected_by or "",
            rejected_at=_ts(m.rejected_at), reason=m.reason, notes=m.notes,
        )

    @post("/{manifest_id:str}/suspend", status_code=HTTP_200_OK, summary="Temporarily suspend an active manifest",
          opt=request_body(ReasonRequest, required=False))
    async def suspend(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> Suspended:
        caller = await admit(request, org_id, "manifests", "suspend", tier="emergency")
        mid = _manifest_id(manifest_id)
        data = await _body(request, ReasonRequest)
        _check_texts(data.reason, data.notes)
        m = (await _transition(request, caller, mid, "suspend", reason=data.reason, notes=data.notes)).manifest
        return Suspended(
            manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, suspended_by=m.suspended_by or "",
            suspended_at=_ts(m.suspended_at), reason=m.reason, notes=m.notes,
        )

    @post("/{manifest_id:str}/reactivate", status_code=HTTP_200_OK, summary="Reactivate a suspended manifest",
          opt=request_body(NotesRequest, required=False))
    async def reactivate(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> Reactivated:
        caller = await admit(request, org_id, "manifests", "reactivate")
        mid = _manifest_id(manifest_id)
        data = await _body(request, NotesRequest)
        _check_texts(None, data.notes)
        m = (await _transition(request, caller, mid, "reactivate", notes=data.notes)).manifest
        return Reactivated(
            manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, reactivated_by=m.reactivated_by or "",
            reactivated_at=_ts(m.reactivated_at), notes=m.notes,
        )

    @post("/{manifest_id:str}/revoke", status_code=HTTP_200_OK, summary="Permanently revoke a manifest",
          opt=request_body(ReasonRequest, required=False))
    async def revoke(self, request: Request[Any, Any, Any], org_id: str, manifest_id: str) -> Revoked:
        caller = await admit(request, org_id, "manifests", "revoke", tier="emergency")
        mid = _manifest_id(manifest_id)
        data = await _body(request, ReasonRequest)
        _check_texts(data.reason, data.notes)
        m = (await _transition(request, caller, mid, "revoke", reason=data.reason, notes=data.notes)).manifest
        return Revoked(
            manifest_id=m.id, uapk_id=m.uapk_id, status=m.status, revoked_by=m.revoked_by or "",
            revoked_at=_ts(m.revoked_at), reason=m.reason, notes=m.notes,
        )


ROUTES = [ManifestController]
