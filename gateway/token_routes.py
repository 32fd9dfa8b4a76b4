"""Capability-token endpoints of the edge: issue (agent key), verify (for tools), JWKS."""
from __future__ import annotations

import base64
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from litestar import Request, get, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from audit.changes import change_context
from core.errors import FieldIssue, PermissionDenied, ValidationFailed
from gateway.agent_auth import TOKEN_ISSUE, TOKEN_VERIFY, agent_of
from gateway.captokens import CapClaims, TokenProblem, TokenService
from policies.capabilities import is_concrete, matches_any
from services import tokens
from services.tokens import TokenIssued, TokenRequest
from store import captokens as repo
from store.runtime import Runtime


class VerifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    capability: str | None = None


class VerifyResponse(msgspec.Struct, omit_defaults=True):
    valid: bool
    reason: str | None = None
    message: str | None = None
    claims: dict[str, Any] | None = None
    capability_allowed: bool | None = None


class Jwk(msgspec.Struct):
    kty: str
    crv: str
    x: str
    kid: str
    alg: str
    use: str


class Jwks(msgspec.Struct):
    keys: list[Jwk]


def tokens_of(request: Request[Any, Any, Any]) -> TokenService:
    return request.app.state.tokens  # type: ignore[no-any-return]


@post("/api/v1/gateway/tokens", tags=["capability tokens"], status_code=HTTP_201_CREATED,
      summary="Issue a capability token to an agent (narrower than or equal to its manifest)", guards=[TOKEN_ISSUE])
async def issue_for_agent(request: Request[Any, Any, Any], data: TokenRequest) -> TokenIssued:
    principal = agent_of(request)  # an agent, admin or owner key, authenticated before the body
    if principal.uapk_ids is not None and data.uapk_id not in principal.uapk_ids:
        raise PermissionDenied(f"UAPK '{data.uapk_id}' has no active manifest in this organization.")
    return await tokens.issue(request.app.state.runtime, principal.org_id or "", data, "gateway", principal.actor,
                              change_context(request, principal, org_id=principal.org_id))


def claims_dict(c: CapClaims) -> dict[str, Any]:
    return {
        "jti": c.jti, "sub": c.agent_id, "org_id": c.org_id, "uapk_id": c.uapk_id, "manifest_hash": c.manifest_hash,
        "capabilities": list(c.capabilities), "constraints": c.constraints, "exp": c.exp, "nbf": c.nbf,
    }


@post("/api/v1/capability-tokens/verify", tags=["capability tokens"], status_code=HTTP_200_OK,
      summary="Check a capability token (for tools without a JWT library)", guards=[TOKEN_VERIFY])
async def verify_token(request: Request[Any, Any, Any], data: VerifyRequest) -> VerifyResponse:
    principal = agent_of(request)  # any API key of the org, authenticated before the body
    runtime: Runtime = request.app.state.runtime
    verdict = tokens_of(request).verifier.verify(data.token)
    if isinstance(verdict, TokenProblem):
        return VerifyResponse(valid=False, reason=verdict.code, message=verdict.message)
    if verdict.org_id != principal.org_id:
        return VerifyResponse(valid=False, reason="capability_token_invalid", message="Token is not valid for this organization.")
    async with runtime.sessions() as session:
        manifest = await repo.active_manifest(session, verdict.org_id, verdict.uapk_id)
    if manifest is None or manifest.manifest_hash != verdict.manifest_hash:
        return VerifyResponse(valid=False, reason="capability_token_revoked", message="The manifest the token was issued against is no longer active.")
    out = VerifyResponse(valid=True, claims=claims_dict(verdict))
    if data.capability is not None:
        if not is_concrete(data.capability):
            raise ValidationFailed("Request body failed validation.", [FieldIssue("capability", "Must be resource:action without wildcards.")])
        # Narrowing: in the token AND still granted by the manifest. Amount/currency constraints
        # are returned in the claims for the tool to apply to its own action.
        in_token = matches_any(verdict.capabilities, data.capability)
        granted = matches_any(list(manifest.approved or []), data.capability)
        out.capability_allowed = in_token and granted
    return out


@get("/.well-known/jwks.json", tags=["capability tokens"], summary="Public keys that verify Bastion's tokens")
async def jwks(request: Request[Any, Any, Any]) -> Jwks:
    runtime: Runtime = request.app.state.runtime
    out = []
    for key in runtime.keys.keys():
        raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        out.append(Jwk(kty="OKP", crv="Ed25519", x=x, kid=key.kid, alg="EdDSA", use="sig"))
    return Jwks(keys=out)


async def start_tokens(app: Any) -> None:
    app.state.tokens = TokenService(app.state.runtime)
    await app.state.tokens.start()


async def stop_tokens(app: Any) -> None:
    tokens = getattr(app.state, "tokens", None)
    if tokens is not None:
        await tokens.stop()


ROUTES = [issue_for_agent, verify_token, jwks]
