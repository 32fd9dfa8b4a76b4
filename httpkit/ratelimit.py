"""Per-organization rate limits on the management API, with the `limits` library.

A tier is a sustained rate per minute plus a burst: at most ``burst`` requests in any 10 s
window (moving windows, so there is no edge doubling). The standard tier is 600/minute with
a burst of 100, the heavy tier (registrations, policy tests, exports, logins) 60/minute with
a burst of 20. Storage is Redis when configured, else in-process memory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from core.settings import Settings


@dataclass(frozen=True)
class Tier:
    name: str
    per_minute: RateLimitItem
    burst: RateLimitItem


class OrgRateLimiter:
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
            "standard": Tier(
                "standard",
                RateLimitItemPerMinute(settings.rate_standard_per_minute),
                RateLimitItemPerSecond(settings.rate_standard_burst, 10),
            ),
            "heavy": Tier(
                "heavy",
                RateLimitItemPerMinute(settings.rate_heavy_per_minute),
                RateLimitItemPerSecond(settings.rate_heavy_burst, 10),
            ),
        }

    async def hit(self, tier_name: str, key: str) -> tuple[dict[str, str], int]:
        """Spend one request. Returns the X-RateLimit-* headers and, when over the limit,
        the seconds to wait (0 when admitted)."""
        if not self.enabled:
            return {}, 0
        tier = self.tiers[tier_name]
        ok_burst = await self.limiter.hit(tier.burst, tier_name, key)
        ok_minute = ok_burst and await self.limiter.hit(tier.per_minute, tier_name, key)
        minute = await self.limiter.get_window_stats(tier.per_minute, tier_name, key)
        burst = await self.limiter.get_window_stats(tier.burst, tier_name, key)
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
