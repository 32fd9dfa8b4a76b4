"""The approvals inbox, its live stream, and one approval's page with its two decisions.

Thin: reading and deciding go through services/approvals.py (visibility, four-eyes, the
conditional update, the audit event in its transaction); the console adds the session, the
CSRF check and the HTML. The member's role comes from ``httpkit.auth.admit`` (the same
membership lookup, rate limit and role table as the API): a viewer reads, an approver or an
admin decides.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, Literal

from litestar import Request, get, post
from litestar.params import Parameter
from litestar.response import Redirect, Response, ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from audit.changes import change_context
from console.accounts import may, org_name
from console.auth_pages import LOGIN, runtime_of, to_login
from console.render import SECURITY_HEADERS, page
from console.sessions import CSRF_FIELD, ConsoleSession, check_csrf, is_tls, read_session, session_cookie
from console.shutdown import stopping
from core.clock import utcnow
from core.errors import AuthenticationRequired, BastionError, NotFound
from gateway.override_signer import override_signer
from httpkit.auth import Caller, Principal, admit
from services import approvals as service
from services import manifests
from store.approvals import PENDING, effective_status
from store.models import Approval, Manifest
from store.runtime import Runtime

INBOX_LIMIT = 100
# Pending approvals read to filter by capability (the service filters by agent only).
SCAN_LIMIT = 500
STREAM_POLL_SECONDS = 2.0
# How often a stream looks whether the server is stopping (console/shutdown.py).
STREAM_TICK_SECONDS = 0.25
# A stream ends after this long; the browser reconnects and the session is checked again.
STREAM_MAX_SECONDS = 300

# An empty value is "all" (what the filter form's first option sends).
Agent = Annotated[str | None, Parameter(query="agent", max_length=63, required=False)]
Capability = Annotated[str | None, Parameter(query="capability", max_length=200, required=False)]
# "Waiting for at least": the menu's choices, in seconds.
AGES = {"5m": 300, "1h": 3600, "1d": 86400}
Age = Annotated[Literal["", "5m", "1h", "1d"] | None, Parameter(query="age", required=False)]
OTHERS_LIMIT = 20


async def _caller(request: Request[Any, Any, Any], session: ConsoleSession, org_id: str, action: str) -> Caller:
    """The signed-in user admitted to ``org_id`` for ``approvals:<action>`` (404 if not a member,
    403 if the role may not)."""
    principal = Principal(kind="user", actor=session.email, user_id=session.user_id)
    # admit() authenticates through this cached principal instead of an API header.
    request.scope.setdefault("state", {})["bastion.principal"] = principal
    return await admit(request, org_id, "approvals", action)


def _inbox_url(org_id: str) -> str:
    return f"/console/orgs/{org_id}/approvals"


async def _pending(request: Request[Any, Any, Any], caller: Caller, org_id: str, agent: str | None,
                   capability: str | None, age: str | None) -> tuple[list[Approval], int, list[Approval]]:
    """(shown, total pending after filters, every pending row scanned for the filter menus)."""
    now = utcnow()
    rows, _total = await service.list_approvals(runtime_of(request), org_id, caller.principal, status=PENDING,
                                                uapk_id=None, limit=SCAN_LIMIT, offset=0, now=now)
    cutoff = now - timedelta(seconds=AGES[age]) if age else None
    matching = [a for a in rows if (agent is None or a.uapk_id == agent)
                and (capability is None or a.capability == capability)
                and (cutoff is None or a.created_at <= cutoff)]
    return matching[:INBOX_LIMIT], len(matching), rows


@get("/orgs/{org_id:str}/approvals")
async def inbox(request: Request[Any, Any, Any], org_id: str, agent: Agent = None, capability: Capability = None,
                age: Age = None,
                partial: Annotated[bool, Parameter(query="partial", required=False)] = False) -> Response[Any]:
    runtime = runtime_of(request)
    session = await read_session(runtime, request)
    if session is None:
        return to_login(request)
    caller = await _caller(request, session, org_id, "read")
    agent, capability, age = agent or None, capability or None, age or None
    shown, total, scanned = await _pending(request, caller, org_id, agent, capability, age)
    context: dict[str, Any] = dict(org_id=org_id, approvals=shown, total=total, agent=agent, capability=capability, age=age,
                   agents=sorted({a.uapk_id for a in scanned}), capabilities=sorted({a.capability for a in scanned}),
                   now=utcnow())
    if partial:  # the list alone, for the live update (console.js swaps it in)
        return page("inbox_list.html", **context)
    return page("inbox.html", session=session, role=caller.role, org=await org_name(runtime, org_id),
                csrf_field=CSRF_FIELD, cookies=[session_cookie(runtime, session, secure=is_tls(request))], **context)


@get("/orgs/{org_id:str}/approvals/stream")
async def stream(request: Request[Any, Any, Any], org_id: str) -> Response[Any]:
    """Server-sent events: ``changed`` whenever the org's pending approvals change (a new one,
    or one decided or expired). There is no approval message on the change bus, so the stream
    polls the pending list every ``STREAM_POLL_SECONDS``."""
    runtime = runtime_of(request)
    session = await read_session(runtime, request)
    if session is None:
        raise AuthenticationRequired("Sign in to the console first.")
    caller = await _caller(request, session, org_id, "read")

    async def signature() -> tuple[int, str | None]:
        # The count and the newest: a new approval changes the newest, a decision or an expiry
        # the count (one count query and one row per poll, whatever the inbox holds).
        rows, total = await service.list_approvals(runtime, org_id, caller.principal, status=PENDING, uapk_id=None,
                                                   limit=1, offset=0, now=utcnow())
        return total, rows[0].id if rows else None

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        last = await signature()
        yield ServerSentEventMessage(event="ready", data="ok", retry=2000)
        deadline = time.monotonic() + STREAM_MAX_SECONDS
        while time.monotonic() < deadline:
            next_poll = time.monotonic() + STREAM_POLL_SECONDS
            while time.monotonic() < next_poll:
                if stopping():  # end the stream so that a restart does not wait for it
                    return
                await asyncio.sleep(STREAM_TICK_SECONDS)
            if await read_session(runtime, request) is None:  # signed out or expired meanwhile
                return
            try:
                now = await signature()
            except BastionError:
                continue  # a passing outage: the next poll tries again
            if now != last:
                last = now
                yield ServerSentEventMessage(event="changed", data=str(now[0]))

    return ServerSentEvent(events(), headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"})


async def _approval_page(request: Request[Any, Any, Any], session: ConsoleSession, caller: Caller, org_id: str,
                         approval: Approval, *, error: str | None = None, status_code: int = 200) -> Response[Any]:
    runtime = runtime_of(request)
    now = utcnow()
    status = effective_status(approval, now)
    others, _n = await service.list_approvals(runtime, org_id, caller.principal, status=PENDING,
                                              uapk_id=approval.uapk_id, limit=OTHERS_LIMIT + 1, offset=0, now=now)
    return page(
        "approval.html", status_code=status_code, session=session, role=caller.role, org_id=org_id,
        org=await org_name(runtime, org_id), a=approval, status=status, error=error,
        manifest=await _manifest(runtime, caller, org_id, approval.uapk_id),
        others=[o for o in others if o.id != approval.id][:OTHERS_LIMIT],
        can_decide=status == PENDING and may(caller.role, "approvals", "decide"),
        csrf_token=session.csrf, csrf_field=CSRF_FIELD,
        default_ttl=runtime.settings.override_token_ttl_seconds,
        cookies=[session_cookie(runtime, session, secure=is_tls(request))],
    )


async def _manifest(runtime: Runtime, caller: Caller, org_id: str, uapk_id: str) -> Manifest | None:
    """The agent's manifest as it is now (the active one, else the newest), if the role may read it."""
    if not may(caller.role, "manifests", "read"):
        return None
    try:
        return await manifests.by_uapk(runtime, org_id, uapk_id)
    except NotFound:
        return None


@get("/orgs/{org_id:str}/approvals/{approval_id:str}")
async def approval_page(request: Request[Any, Any, Any], org_id: str, approval_id: str) -> Response[Any]:
    runtime = runtime_of(request)
    session = await read_session(runtime, request)
    if session is None:
        return to_login(request)
    caller = await _caller(request, session, org_id, "read")
    approval = await service.visible(runtime, org_id, approval_id, caller.principal)
    return await _approval_page(request, session, caller, org_id, approval)


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    # Browsers send CRLF line breaks from a textarea; stored and audited as typed otherwise.
    value = value.replace("\r\n", "\n")
    return value if value.strip() else None


def _ttl(form: Any) -> int | None:
    raw = form.get("expires_in_seconds")
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return -1  # out of range: the service answers with its own message


async def _decide(request: Request[Any, Any, Any], org_id: str, approval_id: str, decision: str) -> Response[Any]:
    runtime = runtime_of(request)
    session = await read_session(runtime, request)
    if session is None:
        return Redirect(LOGIN, status_code=303)
    form = await request.form()
    check_csrf(session.csrf, form)  # before anything else: a forged POST learns nothing
    caller = await _caller(request, session, org_id, "decide")
    ctx = change_context(request, caller)
    try:
        if decision == "approve":
            await service.approve(runtime, ctx, caller.principal, org_id, approval_id, notes=_text(form, "notes"),
                                  expires_in_seconds=_ttl(form), sign=override_signer(runtime))
        else:
            await service.deny(runtime, ctx, caller.principal, org_id, approval_id, reason=_text(form, "reason"),
                               notes=_text(form, "notes"))
    except BastionError as exc:
        if exc.code in {"NOT_FOUND", "SERVICE_UNAVAILABLE", "RATE_LIMIT_EXCEEDED"}:
            raise
        # Four-eyes, already decided (409), bad notes (400): the page again, saying why.
        approval = await service.visible(runtime, org_id, approval_id, caller.principal)
        message = exc.message + "".join(f" {d.field}: {d.issue}" for d in exc.details)
        status = {"PERMISSION_DENIED": 403, "CONFLICT": 409, "VALIDATION_ERROR": 400}.get(exc.code, 422)
        return await _approval_page(request, session, caller, org_id, approval, error=message, status_code=status)
    return Redirect(f"{_inbox_url(org_id)}/{approval_id}", status_code=303,
                    cookies=[session_cookie(runtime, session, secure=is_tls(request))])


@post("/orgs/{org_id:str}/approvals/{approval_id:str}/approve", status_code=303)
async def approve(request: Request[Any, Any, Any], org_id: str, approval_id: str) -> Response[Any]:
    return await _decide(request, org_id, approval_id, "approve")


@post("/orgs/{org_id:str}/approvals/{approval_id:str}/deny", status_code=303)
async def deny(request: Request[Any, Any, Any], org_id: str, approval_id: str) -> Response[Any]:
    return await _decide(request, org_id, approval_id, "deny")


ROUTES = [inbox, stream, approval_page, approve, deny]
