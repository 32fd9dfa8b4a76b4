"""The audit trail API: list and read events, verify the chain, export it as JSONL.

All endpoints need ``audit:read`` (viewer and above); the export is in the heavy rate tier.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get
from litestar.params import Parameter
from litestar.response import Stream

from audit.chain import ZERO_HASH, event_body
from audit.checkpoint import Coverage
from audit.event import format_ts, parse_ts
from audit.export import EXPORT_FORMAT, export_line
from core.clock import isoformat, utcnow
from core.errors import FieldIssue, NotFound, ValidationFailed
from httpkit.auth import admit, require_credentials
from httpkit.pagination import Page, pagination
from store import audit as repo
from store.runtime import Runtime


class AuditEventOut(msgspec.Struct):
    event_id: str
    org_id: str
    seq: int
    kind: str
    created_at: str
    hash: str
    actor: str | None = None
    uapk_id: str | None = None
    agent_id: str | None = None
    capability: str | None = None
    decision: str | None = None
    reasons: list[Any] | None = None
    policy_version: str | None = None
    request_id: str | None = None
    interaction_id: str | None = None
    params_hash: str | None = None
    params: Any = None
    details: dict[str, Any] | None = None


class AuditEventList(msgspec.Struct):
    items: list[AuditEventOut]
    total: int


class CheckpointOut(msgspec.Struct):
    seq: int
    hash: str
    anchor: bool
    kid: str | None = None
    signed_at: str | None = None


class VerifyOut(msgspec.Struct, omit_defaults=True):
    """``first_invalid_event_id`` and ``problem`` only when invalid. ``start``: where the
    chain begins (genesis, or the retention anchor)."""

    valid: bool
    checked: int
    last_checkpoint: CheckpointOut | None
    start: str
    first_seq: int | None
    last_seq: int | None
    first_invalid_event_id: str | None = None
    problem: str | None = None


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _coverage(request: Request[Any, Any, Any]) -> Coverage:
    """The checkpoint rule the audit writer keeps (store/audit_writer.py)."""
    sink = getattr(request.app.state, "audit", None)
    if sink is not None:
        return sink.coverage  # type: ignore[no-any-return]
    return Coverage(_runtime(request).settings.audit_checkpoint_every)


def _event_out(row: Any) -> AuditEventOut:
    return msgspec.convert(repo.public_event(row), AuditEventOut)


def _time_param(query: Any, name: str, issues: list[FieldIssue]) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse_ts(str(raw))
    except ValueError:
        issues.append(FieldIssue(name, "Must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z."))
        return None


TIME_PARAM = "An RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z."


def _window(query: Any, issues: list[FieldIssue]) -> tuple[datetime | None, datetime | None]:
    since, until = _time_param(query, "from", issues), _time_param(query, "to", issues)
    if since is not None and until is not None and since > until:
        issues.append(FieldIssue("to", "Must not be before 'from'."))
    return since, until


class AuditController(Controller):
    guards = [require_credentials]
    path = "/api/v1/orgs/{org_id:str}/audit"
    tags = ["audit"]

    @get("/events", summary="Audit events, newest first (filters: uapk_id, agent_id, decision, kind, from, to)",
         dependencies=pagination())
    async def list_events(
        self, request: Request[Any, Any, Any], org_id: str, page: Page,
        uapk_id: Annotated[str | None, Parameter(min_length=1, max_length=63)] = None,
        agent_id: Annotated[str | None, Parameter(min_length=1, max_length=200)] = None,
        decision: Annotated[Literal["allow", "deny", "escalate"] | None, Parameter()] = None,
        kind: Annotated[str | None, Parameter(min_length=1, max_length=64, description="e.g. gateway.execute")] = None,
        since: Annotated[str | None, Parameter(query="from", description=TIME_PARAM)] = None,
        until: Annotated[str | None, Parameter(query="to", description=TIME_PARAM)] = None,
    ) -> AuditEventList:
        await admit(request, org_id, "audit", "read")
        issues: list[FieldIssue] = []
        start, end = _window({"from": since, "to": until}, issues)
        if issues:
            raise ValidationFailed("Query parameters failed validation.", issues)
        f = repo.EventFilter(uapk_id, agent_id, decision, kind, start, end)
        async with _runtime(request).sessions() as session:
            rows, total = await repo.list_events(session, org_id, f, page.limit, page.offset)
        return AuditEventList(items=[_event_out(r) for r in rows], total=total)

    @get("/events/{event_id:str}", summary="One audit event")
    async def get_event(self, request: Request[Any, Any, Any], org_id: str, event_id: str) -> AuditEventOut:
        await admit(request, org_id, "audit", "read")
        async with _runtime(request).sessions() as session:
            row = await repo.get_event(session, org_id, event_id[:64])
        if row is None:
            raise NotFound("No such audit event.")
        return _event_out(row)

    @get("/verify", summary="Recompute the hash chain and check the signed checkpoints")
    async def verify(self, request: Request[Any, Any, Any], org_id: str) -> VerifyOut:
        await admit(request, org_id, "audit", "read", tier="heavy")
        runtime = _runtime(request)
        coverage = _coverage(request)
        result = await repo.verify_org(runtime.sessions, org_id, runtime.keys,
                                       every=coverage.every, interval=coverage.interval)
        return msgspec.convert(result.as_dict(), VerifyOut)

    @get(
        "/export",
        summary="The chain as JSON Lines (header, signed checkpoints, events with hashes, end)",
        media_type="application/x-ndjson",
        description="Verify offline with `bastion audit verify FILE --jwks URL_OR_FILE` (docs/audit.md).",
    )
    async def export(
        self, request: Request[Any, Any, Any], org_id: str,
        since_param: Annotated[str | None, Parameter(query="from", description=TIME_PARAM)] = None,
        until_param: Annotated[str | None, Parameter(query="to", description=TIME_PARAM)] = None,
    ) -> Stream:
        await admit(request, org_id, "audit", "read", tier="heavy")
        issues: list[FieldIssue] = []
        since, until = _window({"from": since_param, "to": until_param}, issues)
        if issues:
            raise ValidationFailed("Query parameters failed validation.", issues)
        runtime = _runtime(request)
        settings = runtime.settings
        # Sign the current head first, and end there: a complete export ends at a signed
        # checkpoint (a cut tail or deleted checkpoints are then always detected).
        coverage = _coverage(request)
        signed = await repo.checkpoint_now(runtime.sessions, org_id, runtime.keys, settings.issuer, coverage)
        start, end, cps, head = await _export_range(runtime, org_id, since, until, signed)
        header = {
            "type": "header", "format": EXPORT_FORMAT, "org_id": org_id, "issuer": settings.issuer,
            "exported_at": isoformat(utcnow()),
            "from": isoformat(since), "to": isoformat(until),
            "hash": "sha256(prev_hash_bytes || JCS(event)); genesis prev = 32 zero bytes",
            # The writer's checkpoint rule, for checkpoints that do not state theirs.
            "checkpoint_every": coverage.every, "checkpoint_interval": coverage.interval,
        }

        async def lines() -> AsyncIterator[bytes]:
            yield export_line(header)
            for cp in cps:
                yield export_line({"type": "checkpoint", "seq": cp.seq, "hash": cp.hash, "anchor": cp.anchor,
                                        "kid": cp.kid, "signed_at": isoformat(cp.created_at), "token": cp.token})
            count = 0
            last = start - 1
            if end >= start:
                async for row in repo.iter_events(runtime.sessions, org_id, start, end):
                    count += 1
                    last = row.seq
                    yield export_line({"type": "event", "seq": row.seq, "hash": row.hash, "event": event_body(row)})
            yield export_line({"type": "end", "last_seq": last, "events": count, "complete": until is None,
                                    "head_seq": head[0], "head_hash": head[1]})

        name = f"audit-{org_id}-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.jsonl"
        return Stream(lines(), media_type="application/x-ndjson",
                      headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def _export_range(
    runtime: Runtime, org_id: str, since: datetime | None, until: datetime | None, signed: int,
) -> tuple[int, int, list[Any], tuple[int, str]]:
    """[start, end] seqs to export and the checkpoints that go with them. The start moves back
    to the nearest signed checkpoint before ``from`` (or to the beginning), so the export can
    be verified on its own; the end is at most ``signed``, the head signed for this export
    (events appended since then belong to the next one)."""
    from sqlalchemy import func, select

    from store.models import AuditEvent

    async with runtime.sessions() as session:
        head = await repo.get_head(session, org_id)
        head_seq, head_hash = (head.seq, head.hash) if head is not None else (0, ZERO_HASH)
        cps = await repo.load_checkpoints(session, org_id)
        oldest = (await session.execute(select(func.min(AuditEvent.seq)).where(AuditEvent.org_id == org_id))).scalar()
        oldest = int(oldest) if oldest is not None else head_seq + 1
        start = oldest
        if since is not None:
            first = (await session.execute(select(func.min(AuditEvent.seq)).where(
                AuditEvent.org_id == org_id, AuditEvent.created_at >= format_ts(since)))).scalar()
            first = int(first) if first is not None else head_seq + 1
            before = [c.seq for c in cps if c.seq <= first - 1 and c.seq >= oldest - 1]
            start = max(before) + 1 if before else oldest
        end = min(head_seq, signed)
        if until is not None:
            last = (await session.execute(select(func.max(AuditEvent.seq)).where(
                AuditEvent.org_id == org_id, AuditEvent.created_at <= format_ts(until)))).scalar()
            end = min(int(last), signed) if last is not None else start - 1
            end = max(end, start - 1)
    keep = [c for c in cps if start - 1 <= c.seq <= end]
    return start, end, keep, (head_seq, head_hash)


ROUTES = [AuditController]
