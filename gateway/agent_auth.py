"""Agent authentication, one guard for every agent-facing route: the decision endpoints
(``gateway/routes.py``), the agent's approval poll (``gateway/approval_routes.py``) and the
capability-token endpoints (``gateway/token_routes.py``).

A Litestar guard runs before the body is parsed, so a request without a valid credential is
401 whatever its body (malformed, oversized or of the wrong type), and a key whose role may
not use the route is 403 before its body costs anything. The handler reads the body after,
and takes the authenticated key with :func:`agent_of`.

What a route asks for is one :class:`AgentKey`:

* ``roles``: the key roles admitted (``GATEWAY_ROLES``: agent, admin, owner), or None for any
  role of the organization (the approval poll: a viewer sees the approval without its token);
* ``ceiling``: the opt-in per-key ceiling on decision calls (``BASTION_GATEWAY_KEY_PER_MINUTE``);
* ``own_budget``: spend one request of the key's own management-API rate limit (never its
  org's: an agent that floods cannot starve the humans who would stop it);
* ``sessions``: authenticate a session token too, then refuse it with 403 (the token routes
  always answered a user's session that way); otherwise only ``X-API-Key`` is a credential.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from core.errors import AuthenticationRequired, PermissionDenied, RateLimited
from core.settings import Settings
from httpkit.auth import Principal, authenticator, current_principal, limit_credential

GATEWAY_ROLES = frozenset({"agent", "admin", "owner"})
_AGENT = "bastion.agent"


@dataclass(frozen=True, slots=True)
class AgentKey:
    """A Litestar guard admitting an organization API key (see the module docstring).
    ``denied`` is the 403 message; ``{role}`` is replaced by the key's role."""

    roles: frozenset[str] | None = GATEWAY_ROLES
    denied: str = "Role '{role}' may not call the gateway (agent, admin or owner)."
    missing: str = "Missing credentials: send X-API-Key."
    ceiling: bool = False
    own_budget: bool = False
    sessions: bool = False

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], _handler: Any = None) -> None:
        state = connection.scope.setdefault("state", {})  # type: ignore[typeddict-item]
        if self.sessions:
            principal = await current_principal(connection)  # any credential; 401 without one
        else:
            if not connection.headers.get("x-api-key"):
                raise AuthenticationRequired(self.missing)
            principal = await authenticator(connection).authenticate(connection, sessions=False)
        if principal.org_id:  # the key's org: known to the access log even if what follows fails
            state["org_id"] = principal.org_id
        if principal.kind != "api_key" or (self.roles is not None and principal.role not in self.roles):
            raise PermissionDenied(self.denied.format(role=principal.role))
        request: Request[Any, Any, Any] = connection  # type: ignore[assignment]  # HTTP routes get the Request
        if self.own_budget:
            await limit_credential(request, principal)
        if self.ceiling:
            settings: Settings = connection.app.state.settings
            if settings.gateway_key_per_minute > 0:
                await _key_ceiling(request, principal, settings.gateway_key_per_minute)
        state[_AGENT] = principal


def agent_of(request: Request[Any, Any, Any]) -> Principal:
    """The API key an :class:`AgentKey` guard admitted for this request."""
    principal = request.scope.get("state", {}).get(_AGENT)
    if not isinstance(principal, Principal):  # a route without the guard: a wiring bug
        raise RuntimeError("no agent key: add an AgentKey guard to this route")
    return principal


async def _key_ceiling(request: Request[Any, Any, Any], principal: Principal, per_minute: int) -> None:
    """Opt-in (``BASTION_GATEWAY_KEY_PER_MINUTE``): a per-API-key ceiling on decision calls,
    in the management API's rate-limit storage (one more round trip when enabled)."""
    from limits import RateLimitItemPerMinute
    from limits.aio.strategies import FixedWindowRateLimiter

    state = request.app.state
    limiter = getattr(state, "gateway_key_limiter", None)
    if limiter is None:
        limiter = state.gateway_key_limiter = FixedWindowRateLimiter(state.rate_limiter.storage)
    item = RateLimitItemPerMinute(per_minute)
    key = principal.key_id or ""
    if not await limiter.hit(item, "gateway-key", key):
        stats = await limiter.get_window_stats(item, "gateway-key", key)
        retry = max(1, int(stats.reset_time - time.time() + 0.999))
        raise RateLimited(f"More than {per_minute} gateway calls per minute for this API key.", retry)


# The guards of the agent-facing routes.
DECISIONS = AgentKey(missing="Missing credentials: the gateway takes X-API-Key.", ceiling=True)
APPROVAL_POLL = AgentKey(roles=None, own_budget=True)
TOKEN_ISSUE = AgentKey(denied="Capability tokens are issued to agent, admin or owner API keys.", sessions=True)
TOKEN_VERIFY = AgentKey(roles=None, denied="Use an API key of the token's organization.", sessions=True)
