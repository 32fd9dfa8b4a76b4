"""In-memory sets of token ids that must stay refused until the token expires: revoked
capability tokens, spent override tokens.

Each process keeps its own set, fed three ways so a decision never pays a round trip for it:
at once by the process that made the change, within milliseconds by the change bus (Redis
pub/sub), and by a periodic catch-up query (a missed message, a restart, or — for override
tokens — a Redis that lost its single-use markers)."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from core.clock import utcnow
from core.tokens import LEEWAY_SECONDS
from store.bus_messages import CapabilityTokenRevoked, Change, OverrideConsumed

# (session, since, now) -> [(id, expires_at)]
Loader = Callable[[Any, datetime | None, datetime], Awaitable[list[tuple[str, datetime]]]]


class ExpiringIds:
    def __init__(self, message_type: type[CapabilityTokenRevoked] | type[OverrideConsumed], loader: Loader):
        self._ids: dict[str, float] = {}  # id -> expiry (epoch s)
        self._since: datetime | None = None
        self.message_type = message_type  # the bus message that adds one id
        self._loader = loader

    def __contains__(self, token_id: str) -> bool:
        return token_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, token_id: str, exp: float) -> None:
        if exp > time.time() - LEEWAY_SECONDS:
            self._ids[token_id] = exp

    def prune(self) -> None:
        # Kept until the token would have expired anyway (plus the verification leeway).
        horizon = time.time() - LEEWAY_SECONDS
        for token_id in [t for t, e in self._ids.items() if e < horizon]:
            del self._ids[token_id]

    async def refresh(self, runtime: Any) -> None:
        """Catch up from SQL; overlapping windows (5 s) so a row committed late is not missed."""
        now = utcnow()
        since = self._since - timedelta(seconds=5) if self._since else None
        async with runtime.sessions() as session:
            rows = await self._loader(session, since, now)
        for token_id, exp in rows:
            self.add(token_id, exp.timestamp())
        self._since = now
        self.prune()

    async def on_change(self, message: Change) -> None:
        if isinstance(message, self.message_type):
            self.add(message.jti, message.exp)
