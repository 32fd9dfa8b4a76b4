"""Authentication (who is calling) and the org guard (may they do this, here).

Credentials: ``X-API-Key`` (an org API key) or ``Authorization: Bearer <session JWT>``.
The organization always comes from the credential: an org id in the path that the
credential does not belong to answers 404, exactly like one that does not exist.
"""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from core.errors import AuthenticationRequired, NotFound, PermissionDenied, RateLimited
from core.tokens import SESSION_TYP, TokenInvalid, verify
from httpkit.ratelimit import credential_bucket
from policies.rbac import default_roles
from store import accounts
from store.api_keys import KEY_PREFIX, hash_key
from store.bus_messages import ApiKeyRevoked, Change
from store.runtime import Runtime

SESSION_AUDIENCE = "bastion-api"
_KEY_CACHE_TTL = 30.0  # seconds; revocation also evicts at once through the change bus


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "user" | "api_key"
    actor: str  # the user's email or the API key's name: recorded as who did what
    user_id: str | None = None
    key_id: str | None = None
    org_id: str | None = None  # fixed for an API key
    role: str | None = None  # fixed for an API key
    uapk_ids: tuple[str, ...] | None = None
    key_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """A principal admitted to one organization with one role."""

    principal: Principal
    org_id: str
    role: str

    @property
    def actor(self) -> str:
        return self.principal.actor


class Authenticator:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._cache: dict[str, tuple[Principal, float]] = {}
        runtime.bus.subscribe(self._on_change)

    async def _on_change(self, message: Change) -> None:
        if isinstance(message, ApiKeyRevoked):
            self._cache.pop(message.key_hash, None)
            self.evict_id(message.key_id)

    def evict_id(self, key_id: str) -> None:
        for h, (p, _) in list(self._cache.items()):
            if p.key_id == key_id:
                self._cache.pop(h, None)

    async def api_key(self, raw: str) -> Principal:
        if not raw.startswith(KEY_PREFIX) or len(raw) > 128:
            raise AuthenticationRequired("Invalid API key.")
        key_hash = hash_key(self.runtime.pepper, raw)
        hit = self._cache.get(key_hash)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self.runtime.sessions() as session:
            key = await accounts.find_api_key(session, key_hash)
        # The lookup is by the keyed hash (an index); compare it again in constant time.
        if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, key_hash):
            self._cache.pop(key_hash, None)
            raise AuthenticationRequired("Invalid or revoked API key.")
        principal = Principal(
            kind="api_key",
            actor=key.name,
            key_id=key.id,
            org_id=key.org_id,
            role=key.role,
            uapk_ids=tuple(key.uapk_ids) if key.uapk_ids is not None else None,
            key_hash=key_hash,
        )
        self._cache[key_hash] = (principal, now + _KEY_CACHE_TTL)
        return principal

    def session(self, token: str) -> Principal:
        s = self.runtime.settings
        try:
            claims = verify(self.runtime.keys, token, SESSION_TYP, issuer=s.issuer, audience=SESSION_AUDIENCE)
        except TokenInvalid:
            raise AuthenticationRequired("Invalid or expired session token.") from None
        email = claims.get("email")
        if not isinstance(email, str):
            raise AuthenticationRequired("Invalid session token.")
        return Principal(kind="user", actor=email, user_id=str(claims["sub"]))

    async def authenticate(self, request: ASGIConnection[Any, Any, Any, Any], *, sessions: bool = True) -> Principal:
        raw_key = request.headers.get("x-api-key")
        if raw_key:
            return await self.api_key(raw_key.strip())
        auth = request.headers.get("authorization")
        if auth and sessions:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self.session(token.strip())
        raise AuthenticationRequired("Missing credentials: send X-API-Key or Authorization: Bearer.")


def authenticator(request: ASGIConnection[Any, Any, Any, Any]) -> Authenticator:
    return request.app.state.authenticator  # type: ignore[no-any-return]


_PRINCIPAL = "bastion.principal"


async def current_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The authenticated caller (API key or session token); 401 otherwise. Computed once per
    request (the ``require_credentials`` guard may already have done it)."""
    state = request.scope.setdefault("state", {})  # type: ignore[typeddict-item]
    cached = state.get(_PRINCIPAL)
    if isinstance(cached, Principal):
        return cached
    principal = await authenticator(request).authenticate(request)
    state[_PRINCIPAL] = principal
    if principal.org_id:  # an API key's org: known for the access log even if the body is bad
        state.setdefault("org_id", principal.org_id)
    return principal


async def require_credentials(connection: ASGIConnection[Any, Any, Any, Any], _handler: Any) -> None:
    """Litestar guard: authenticate before the body is parsed, so an unauthenticated request
    with a bad body gets 401, not 400. Handlers still call ``admit``/``current_principal``."""
    await current_principal(connection)


# Every management route under this prefix needs credentials (they all call ``admit``).
MANAGEMENT_PREFIX = "/api/v1/orgs"


async def management_credentials(connection: ASGIConnection[Any, Any, Any, Any], handler: Any) -> None:
    """App-wide guard (installed by ``build_app``): on the management API (``/api/v1/orgs...``)
    authenticate before the body is parsed, so 401 comes before 400 on every such route.
    A handler can opt out with ``opt={"public": True}``."""
    path = connection.scope.get("path", "")
    if not (path == MANAGEMENT_PREFIX or path.startswith(MANAGEMENT_PREFIX + "/")):
        return
    if connection.scope.get("method") == "OPTIONS" or (handler is not None and handler.opt.get("public")):
        return
    await current_principal(connection)


async def admit(
    request: Request[Any, Any, Any],
    org_id: str,
    resource: str,
    action: str,
    tier: str = "standard",
) -> Caller:
    """Authenticate, resolve the caller's role in ``org_id``, rate-limit, check the role.

    The rate limit is the caller's own (its API key, or its user), never the organization's:
    an agent that floods cannot starve the humans who would stop it. Routes that stop an
    agent (revocations, suspension) pass ``tier="emergency"``, whose buckets are separate."""
    principal = await current_principal(request)
    if principal.kind == "api_key":
        if principal.org_id != org_id:
            raise NotFound()
        role = principal.role or ""
    else:
        runtime: Runtime = request.app.state.runtime
        async with runtime.sessions() as session:
            membership = await accounts.get_membership(session, org_id, principal.user_id or "")
        if membership is None:
            raise NotFound()
        role = membership.role
    state = request.scope.setdefault("state", {})
    state["org_id"] = org_id
    await rate_limit(request, tier, credential_bucket(principal))
    if not default_roles().allows(role, resource, action):
        raise PermissionDenied(f"Role '{role}' may not {action} {resource}.")
    return Caller(principal, org_id, role)


async def limit_credential(request: Request[Any, Any, Any], principal: Principal, tier: str = "standard") -> None:
    """Spend one request of ``principal``'s own bucket (routes that do not call ``admit``)."""
    await rate_limit(request, tier, credential_bucket(principal))


async def rate_limit(request: Request[Any, Any, Any], tier: str, key: str) -> None:
    limiter = request.app.state.rate_limiter
    headers, retry_after = await limiter.hit(tier, key)
    # Added to the response (success or 429) by httpkit.context.RequestContext.
    request.scope.setdefault("state", {})["response_headers"] = headers
    if retry_after:
        raise RateLimited(f"Too many requests for the {tier} tier. Retry after {retry_after} s.", retry_after)
