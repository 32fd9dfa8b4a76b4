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

import time
from dataclasses import dataclass
from typing import Protocol

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
