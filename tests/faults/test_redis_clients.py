"""Every Redis client on the request path is built to fail fast: socket and connect timeouts
within the 250 ms budget of a 503 and no retries (redis-py's default retries would turn a
frozen Redis into seconds of stall). Checked on the real app's clients, not on wall clocks;
the wall-clock side is in test_redis_faults.py."""
from __future__ import annotations

from typing import Any

import pytest

BUDGET = 0.25


@pytest.fixture
def backend() -> str:
    return "postgres"  # the mode with Redis


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return redis_server.url()  # a private Redis (tests/faults/conftest.py)


@pytest.fixture
def settings(settings_factory: Any) -> Any:
    from core.settings import Settings

    # The production default (the suite's other in-process apps get a longer one).
    return settings_factory(redis_timeout_ms=Settings.redis_timeout_ms)


def test_the_production_default_is_the_budget() -> None:
    from core.settings import load_settings

    assert load_settings(env={}).redis_timeout_ms / 1000 == BUDGET


def _check(name: str, redis: Any) -> None:
    kwargs = redis.connection_pool.connection_kwargs
    assert kwargs.get("socket_timeout") is not None and kwargs["socket_timeout"] <= BUDGET, (name, kwargs)
    assert kwargs.get("socket_connect_timeout") is not None and kwargs["socket_connect_timeout"] <= BUDGET, (name, kwargs)
    assert not kwargs.get("retry_on_timeout"), (name, kwargs)
    retry = kwargs.get("retry")
    assert retry is None or retry.get_retries() == 0, (name, retry)
    pool_wait = getattr(redis.connection_pool, "timeout", None)  # BlockingConnectionPool
    assert pool_wait is None or pool_wait <= BUDGET, (name, pool_wait)


async def test_request_path_redis_clients_fail_fast(client: Any) -> None:
    state = client.app.state
    # Management changes hand their audit event over with one XADD on the sink's own client:
    # it is on the request path too, and in this (Redis) mode it must exist.
    assert state.audit.redis_mode
    clients = {"quotas and pub/sub publisher (runtime.redis)": state.runtime.redis,
               "rate limiter storage": state.rate_limiter.storage.bridge.storage,
               "audit sink XADD": state.audit._writer_redis}
    assert all(c is not None for c in clients.values()), clients
    for name, redis in clients.items():
        _check(name, redis)
    # And the connections they have actually opened use those settings.
    await state.runtime.redis.ping()
    conn = await state.runtime.redis.connection_pool.get_connection()
    try:
        assert conn.socket_timeout <= BUDGET and conn.retry.get_retries() == 0
    finally:
        await state.runtime.redis.connection_pool.release(conn)
