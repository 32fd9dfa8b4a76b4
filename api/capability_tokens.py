"""Administrators' capability tokens: issue for delegation, list (metadata only), revoke."""
from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from audit.changes import change_context
from core.clock import isoformat
from httpkit.auth import admit
from httpkit.openapi import NO_BODY, declared_body
from httpkit.pagination import Page, pagination
from services import tokens
from services.tokens import TokenIssued, TokenRequest
from store import captokens as repo
from store.models import CapabilityToken


class TokenMeta(msgspec.Struct):
    token_id: str
    uapk_id: str
    agent_id: str
    capabilities: list[str]
    constraints: dict[str, Any]
    manifest_hash: str
    kid: str
    issued_via: str
    issued_by: str
    created_at: str
    expires_at: str
    revoked_at: str | None
    revoked_by: str | None


class TokenList(msgspec.Struct):
    items: list[TokenMeta]
    total: int


def _meta(t: CapabilityToken) -> TokenMeta:
    return TokenMeta(
        token_id=t.id, uapk_id=t.uapk_id, agent_id=t.agent_id, capabilities=list(t.capabilities),
        constraints=dict(t.constraints), manifest_hash=t.manifest_hash, kid=t.kid, issued_via=t.issued_via,
        issued_by=t.issued_by, created_at=isoformat(t.created_at) or "", expires_at=isoformat(t.expires_at) or "",
        revoked_at=isoformat(t.revoked_at), revoked_by=t.revoked_by,
    )


class CapabilityTokenController(Controller):
    path = "/api/v1/orgs/{org_id:str}/capability-tokens"
    tags = ["capability tokens"]

    @post("/", status_code=HTTP_201_CREATED, summary="Issue a capability token for delegation")
    async def create(self, request: Request[Any, Any, Any], org_id: str, data: TokenRequest) -> TokenIssued:
        caller = await admit(request, org_id, "capability_tokens", "manage")
        return await tokens.issue(request.app.state.runtime, org_id, data, "admin", caller.actor,
                                  change_context(request, caller))

    @get("/", summary="List issued tokens (metadata only, never the token)", dependencies=pagination())
    async def list_tokens(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> TokenList:
        await admit(request, org_id, "capability_tokens", "read")
        async with request.app.state.runtime.sessions() as session:
            rows, total = await repo.list_tokens(session, org_id, page.limit, page.offset)
        return TokenList(items=[_meta(t) for t in rows], total=total)

    @post("/{token_id:str}/revoke", status_code=HTTP_200_OK, summary="Revoke: refused everywhere within 1 s",
          opt=NO_BODY)
    async def revoke_token(self, request: Request[Any, Any, Any], org_id: str, token_id: str) -> TokenMeta:
        caller = await admit(request, org_id, "capability_tokens", "manage", tier="emergency")
        await declared_body(request)
        row = await tokens.revoke(request.app.state.runtime, org_id, token_id, caller.actor,
                                  change_context(request, caller))
        return _meta(row)


ROUTES = [CapabilityTokenController]
