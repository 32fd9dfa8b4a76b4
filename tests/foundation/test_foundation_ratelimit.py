"""Rate limits on the management API (both backends: memory and Redis). Buckets are per
credential: tests/foundation/test_fixes_accounts.py."""
from __future__ import annotations

from typing import Any

from tests.conftest import assert_error, bootstrap_org, serve_app


async def _app(settings_factory: Any, **overrides: Any) -> Any:
    from bastion.app import create_app

    return create_app(settings_factory(**overrides))


async def test_headers_decrease_then_429_with_retry_after(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_standard_burst=3, rate_standard_per_minute=100)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        url = f"/api/v1/orgs/{a.org_id}"
        remaining = []
        for _ in range(3):
            r = await c.get(url, headers=a.headers)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit"] == "3"
            int(r.headers["x-ratelimit-reset"])
            remaining.append(int(r.headers["x-ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        r = await c.get(url, headers=a.headers)
        body = assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert body["details"] == []
        retry = int(r.headers["retry-after"])
        assert 1 <= retry <= 10
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert r.headers["x-ratelimit-limit"] == "3"
        # Every endpoint shares the credential's budget.
        r = await c.get(f"/api/v1/orgs/{a.org_id}/users", headers=a.headers)
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")


async def test_limits_are_per_organization(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_standard_burst=2, rate_standard_per_minute=100)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        b = await bootstrap_org(app, "globex", "owner@globex.com")
        for _ in range(2):
            assert (await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)).status_code == 200
        assert_error(await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers), 429, "RATE_LIMIT_EXCEEDED")
        # Org B is unaffected: a full budget.
        r = await c.get(f"/api/v1/orgs/{b.org_id}", headers=b.headers)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining"] == "1"


async def test_per_minute_limit_binds_when_lower_than_burst(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_standard_burst=50, rate_standard_per_minute=2)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        r = await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)
        assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == "1"
        await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)
        r = await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert 1 <= int(r.headers["retry-after"]) <= 60


async def test_heavy_tier_is_separate_and_applies_to_login(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_heavy_burst=2, rate_heavy_per_minute=100, rate_standard_burst=100)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        # Failed logins are counted (per client address, among others: test_fixes_accounts.py).
        creds = {"email": a.email, "password": "wrong-password"}
        for _ in range(2):
            r = await c.post("/api/v1/auth/login", json=creds)
            assert r.status_code == 401 and r.headers["x-ratelimit-limit"] == "2"
        r = await c.post("/api/v1/auth/login", json=creds)
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["retry-after"]) >= 1
        # The standard tier of the org is untouched.
        r = await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "100"


async def test_rate_limits_can_be_disabled(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_standard_burst=1, rate_limits_enabled=False)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        for _ in range(3):
            r = await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)
            assert r.status_code == 200
            assert "x-ratelimit-limit" not in r.headers


async def test_storage_matches_the_backend(settings_factory: Any, backend: str) -> None:
    from limits.aio.storage import MemoryStorage, RedisStorage

    app = await _app(settings_factory)
    storage = app.state.rate_limiter.storage
    assert isinstance(storage, RedisStorage if backend == "postgres" else MemoryStorage)


def test_rate_settings_come_from_the_environment() -> None:
    from core.settings import load_settings

    s = load_settings(
        {
            "BASTION_RATE_STANDARD_PER_MINUTE": "1200",
            "BASTION_RATE_STANDARD_BURST": "7",
            "BASTION_RATE_HEAVY_PER_MINUTE": "30",
            "BASTION_RATE_HEAVY_BURST": "5",
            "BASTION_RATE_LIMITS_ENABLED": "false",
        }
    )
    assert (s.rate_standard_per_minute, s.rate_standard_burst, s.rate_heavy_per_minute, s.rate_heavy_burst) == (1200, 7, 30, 5)
    assert s.rate_limits_enabled is False
    d = load_settings({})
    assert (d.rate_standard_per_minute, d.rate_standard_burst, d.rate_heavy_per_minute, d.rate_heavy_burst) == (600, 100, 60, 20)
