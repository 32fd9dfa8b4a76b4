"""Rate limits on the management API, per credential, with the `limits` library.

A tier is a sustained rate per minute plus a burst: at most ``burst`` requests in any 10 s
window (moving windows, so there is no edge doubling). The standard tier is 600/minute with
a burst of 100, the heavy tier (registrations, policy tests, exports) 60/minute with a burst
of 20. Storage is Redis when configured, else in-process memory.

Buckets belong to one credential (an API key, or a user for session tokens), never to the
organization as a whole: a shared bucket let one flooding agent key answer 429 to every
administrator of its organization, including the one trying to revoke it. The emergency
tier (revoking an API key, a capability token or a manifest, suspending a manifest) has
buckets of its own, so a credential that spent its standard budget can still stop an agent.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Protocol

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from core.settings import Settings


@dataclass(frozen=True)
class Tier:
    name: str
    per_minute: RateLimitItem
    burst: RateLimitItem


class _Credential(Protocol):
    kind: str
    user_id: str | None
    key_id: str | None


def credential_bucket(principal: _Credential) -> str:
    """The bucket of one credential: the API key's id, or the user's id for a session token
    (one person, whichever organization the request names)."""
    if principal.kind == "api_key":
        return "key:" + (principal.key_id or "")
    return "user:" + (principal.user_id or "")


def _tier(name: str, per_minute: int, burst: int) -> Tier:
    return Tier(name, RateLimitItemPerMinute(per_minute), RateLimitItemPerSecond(burst, 10))


class OrgRateLimiter:
    """The management API's limiter (the name is historical: buckets are per credential)."""

    def __init__(self, settings: Settings):
        self.enabled = settings.rate_limits_enabled
        storage: Storage
        if settings.redis_url:
            # The same fail-fast timeouts as every Redis call on the request path (no retries).
            storage = RedisStorage("async+" + settings.redis_url, implementation="redispy",
                                   socket_timeout=settings.redis_timeout_ms / 1000,
                                   socket_connect_timeout=settings.redis_timeout_ms / 1000)
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(storage)
        self.tiers = {
            "standard": _tier("standard", settings.rate_standard_per_minute, settings.rate_standard_burst),
            "heavy": _tier("heavy", settings.rate_heavy_per_minute, settings.rate_heavy_burst),
            "emergency": _tier("emergency", settings.rate_emergency_per_minute, settings.rate_emergency_burst),
            # Failed logins from every address together: one per-minute window (no tighter burst).
            "login-global": _tier("login-global", settings.login_failures_per_minute, settings.login_failures_per_minute),
        }

    async def hit(self, tier_name: str, key: str) -> tuple[dict[str, str], int]:
        """Spend one request. Returns the X-RateLimit-* headers and, when over the limit,
        the seconds to wait (0 when admitted)."""
        if not self.enabled:
            return {}, 0
        tier = self.tiers[tier_name]
        ok_burst = await self.limiter.hit(tier.burst, tier_name, key)
        ok_minute = ok_burst and await self.limiter.hit(tier.per_minute, tier_name, key)
        return await self._report(tier, key, ok_burst, ok_minute)

    async def peek(self, tier_name: str, key: str) -> tuple[dict[str, str], int]:
        """Like ``hit`` but spends nothing: would one more request be admitted?"""
        if not self.enabled:
            return {}, 0
        tier = self.tiers[tier_name]
        ok_burst = await self.limiter.test(tier.burst, tier_name, key)
        ok_minute = ok_burst and await self.limiter.test(tier.per_minute, tier_name, key)
        return await self._report(tier, key, ok_burst, ok_minute)

    async def spend(self, tier_name: str, key: str) -> None:
        """Count one request whether or not it fits (a failed login, counted after the fact)."""
        if not self.enabled:
            return
        tier = self.tiers[tier_name]
        await self.limiter.hit(tier.burst, tier_name, key)
        await self.limiter.hit(tier.per_minute, tier_name, key)

    async def counted(self, tier_name: str, key: str) -> bool:
        """Whether ``key`` has any request counted in the tier's per-minute window."""
        if not self.enabled:
            return False
        tier = self.tiers[tier_name]
        stats = await self.limiter.get_window_stats(tier.per_minute, tier_name, key)
        return stats.remaining < tier.per_minute.amount

    async def _report(self, tier: Tier, key: str, ok_burst: bool, ok_minute: bool) -> tuple[dict[str, str], int]:
        minute = await self.limiter.get_window_stats(tier.per_minute, tier.name, key)
        burst = await self.limiter.get_window_stats(tier.burst, tier.name, key)
        now = time.time()
        # Report the window that binds first: the one with fewer requests left.
        if burst.remaining < minute.remaining:
            limit, stats = tier.burst, burst
        else:
            limit, stats = tier.per_minute, minute
        headers = {
            "X-RateLimit-Limit": str(limit.amount),
            "X-RateLimit-Remaining": str(max(0, stats.remaining)),
            "X-RateLimit-Reset": str(int(stats.reset_time)),
        }
        if not (ok_burst and ok_minute):
            blocked = burst if not ok_burst else minute
            headers["X-RateLimit-Remaining"] = "0"
            return headers, max(1, int(blocked.reset_time - now + 0.999))
        return headers, 0


# --- login -----------------------------------------------------------------------------------
def client_address(scope: Any) -> str:
    """The client's address as the ASGI server reports it (``scope["client"]``). Behind a
    reverse proxy, ``bastion serve`` lets uvicorn take it from X-Forwarded-For only when the
    peer is one of ``BASTION_TRUSTED_PROXIES``. IPv6 clients are grouped by /64 (one host
    usually owns a whole /64, so single addresses would be free to rotate)."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """Password guessing limits for one attempt (``email`` from ``address``).

    Only failures are counted (after the password was checked), three ways, on the heavy tier:
    per client address (any email), per email (any address) and per email *and* address; plus
    every failure together on the ``login-global`` tier. Every attempt also spends the
    address's standard-tier bucket (a valid password still costs a hash).

    * An address over its failure budget is refused (429) before any hashing.
    * An email over its budget is refused only to addresses that failed for that email in
      the window, and the global budget only to addresses that failed at all: strangers
      guessing a user's password do not lock the user (trying from elsewhere) out, while each
      guessing address gets at most one more try per window.
    """

    def __init__(self, limiter: OrgRateLimiter, address: str, email: str):
        self.limiter = limiter
        self.address = "login-addr:" + address
        self.email = "login-email:" + email
        self.pair = f"login-pair:{address}:{email}"

    async def admit_attempt(self) -> tuple[dict[str, str], int]:
        """Spend the address's attempt budget and check the failure budgets. Returns the
        headers to send and the seconds to wait (0: go ahead and check the password)."""
        headers, retry = await self.limiter.hit("standard", self.address)
        if retry:
            return headers, retry
        return await self.check()

    async def check(self) -> tuple[dict[str, str], int]:
        """The failure budgets (spends nothing); the headers are the address's failure window."""
        lim = self.limiter
        headers, retry = await lim.peek("heavy", self.address)
        if retry:
            return headers, retry
        if await lim.counted("heavy", self.pair):
            _, retry = await lim.peek("heavy", self.email)
        if not retry and await lim.counted("heavy", self.address):
            _, retry = await lim.peek("login-global", "all")
        if retry:
            headers = {**headers, "X-RateLimit-Remaining": "0"}
        return headers, retry

    async def failed(self) -> None:
        for tier, key in (("heavy", self.address), ("heavy", self.email), ("heavy", self.pair), ("login-global", "all")):
            await self.limiter.spend(tier, key)
