"""``POST /api/v1/gateway/evaluate`` and ``POST /api/v1/gateway/execute`` (agent-facing).

Credentials: ``X-API-Key`` only, of a key with role agent, admin or owner. The organization is
the key's. The body is read only after authentication (a request without a credential is 401
whatever its body) and is capped at ``Settings.gateway_max_body`` (64 KiB). Decisions,
including deny and escalate, are HTTP 200.
"""
from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, Router, post
from litestar.exceptions import HTTPException

from audit.changes import actor_of, request_id_of
from core.settings import Settings
from gateway.agent_auth import DECISIONS, agent_of
from gateway.schemas import EvaluateResponse, ExecuteResponse, GatewayActionRequest
from gateway.service import Gateway, ratelimit_headers
from httpkit.openapi import declared_body, request_body


async def _body(request: Request[Any, Any, Any]) -> GatewayActionRequest:
    settings: Settings = request.app.state.settings
    raw = await request.body()  # the route's cap applies while streaming
    if len(raw) > settings.gateway_max_body:
        raise HTTPException(status_code=413)
    return await declared_body(request)  # type: ignore[no-any-return]


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def evaluate(request: Request[Any, Any, Any]) -> Response[EvaluateResponse]:
    principal = agent_of(request)  # the DECISIONS guard authenticated it before the body
    req = await _body(request)
    body, decision = await _gateway(request).evaluate(
        principal.org_id or "", req, uapk_ids=principal.uapk_ids, actor=actor_of(principal), request_id=request_id_of(request)
    )
    return Response(body, status_code=200, media_type=MediaType.JSON, headers=ratelimit_headers(decision))


async def execute(request: Request[Any, Any, Any]) -> Response[ExecuteResponse]:
    principal = agent_of(request)
    req = await _body(request)
    body, decision = await _gateway(request).execute(
        principal.org_id or "", req, uapk_ids=principal.uapk_ids, key_id=principal.key_id,
        actor=actor_of(principal), request_id=request_id_of(request),
    )
    return Response(body, status_code=200, media_type=MediaType.JSON, headers=ratelimit_headers(decision))


def router(max_body: int | None = Settings.gateway_max_body) -> Router:
    """Fresh handler objects per app (Litestar resolves the body cap per handler). ``None``
    leaves the cap to the enclosing layer."""
    extra: dict[str, Any] = {} if max_body is None else {"request_max_body_size": max_body}
    # The body is read by the handler, after authentication: declared for the document here.
    body = request_body(GatewayActionRequest, description="The action to decide (the UAPK SDK's GatewayActionRequest).")
    return Router(
        "/api/v1/gateway",
        route_handlers=[
            post("/evaluate", status_code=200, tags=["gateway"], summary="Dry-run decision with trace", opt=body, guards=[DECISIONS])(evaluate),
            post("/execute", status_code=200, tags=["gateway"], summary="Decide, spend quota, escalate", opt=body, guards=[DECISIONS])(execute),
        ],
        **extra,
    )
