"""Everything a process needs to talk to its backing services, built once from Settings."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.settings import Settings
from store.bus import ChangeBus, RedisChangeBus
from store.db import make_engine, make_sessionmaker
from store.keystore import KeyStore, load_pepper


def make_redis(url: str, timeout: float = 0.25) -> Redis:
    # Bounded timeouts and no retries: a frozen Redis must turn into a fast 503, not a 5 s stall.
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=0,
        decode_responses=False,
    )


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    keys: KeyStore
    pepper: bytes
    bus: ChangeBus
    redis: Redis | None = None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url)
        key_path = Path(settings.signing_key_file) if settings.signing_key_file else settings.data_dir / "signing-keys.json"
        keys = KeyStore.load_or_create(key_path)
        pepper = load_pepper(settings.data_dir, settings.api_key_pepper)
        redis = make_redis(settings.redis_url, settings.redis_timeout_ms / 1000) if settings.redis_url else None
        bus: ChangeBus = ChangeBus()
        if settings.redis_url:
            sub = make_pubsub_redis(settings.redis_url)
            # Pub/sub channels are global to a Redis server; scope ours by database number so
            # deployments (and test runs) sharing one server on different DBs stay apart.
            db = sub.connection_pool.connection_kwargs.get("db", 0)
            bus = RedisChangeBus(sub, channel=f"bastion:changes:{db}")
        return cls(settings, engine, make_sessionmaker(engine), keys, pepper, bus, redis)

    async def start(self) -> None:
        await self.bus.start()

    def probes(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """Readiness: one probe per backing service (the database, and Redis when configured),
        each raising if its service does not answer. ``/readyz`` runs them (httpkit/health.py)."""
        engine, redis = self.engine, self.redis

        async def database() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        probes: dict[str, Callable[[], Awaitable[None]]] = {"database": database}
        if redis is not None:
            async def ping() -> None:
                await redis.ping()

            probes["redis"] = ping
        return probes

    async def close(self) -> None:
        await self.bus.stop()
        if isinstance(self.bus, RedisChangeBus):
            await self.bus.redis.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def make_pubsub_redis(url: str) -> Redis:
    # The subscriber blocks on reads for as long as nothing is published: no socket timeout.
    return Redis.from_url(url, socket_connect_timeout=1, health_check_interval=10)
