"""Issue 11, accounts: rate limits per credential (a flooding agent cannot lock administrators
out), login throttling, invitations instead of silent enrolment, and the CLI's data directory.
Both backends (memory and Redis rate-limit storage, SQLite and PostgreSQL)."""
from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import assert_error, bootstrap_org, make_key, serve_app


async def _app(settings_factory: Any, **overrides: Any) -> Any:
    from bastion.app import create_app

    return create_app(settings_factory(**overrides))


async def _session(c: Any, email: str, password: str) -> dict[str, str]:
    r = await c.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["access_token"]}


# --- security item 2: rate limits per credential -------------------------------------------
async def test_a_flooding_agent_key_never_throttles_the_humans_who_would_stop_it(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_standard_burst=5, rate_standard_per_minute=1000)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        agent = await make_key(c, a, "agent")
        session = await _session(c, a.email, a.password)
        poll = f"/api/v1/approvals/{uuid.uuid4()}"
        statuses = [(await c.get(poll, headers={"X-API-Key": agent})).status_code for _ in range(8)]
        # The agent exhausts its own budget: 404 (no such approval) until 429.
        assert statuses[:5] == [404] * 5 and statuses[5:] == [429] * 3, statuses
        r = await c.get(poll, headers={"X-API-Key": agent})
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        # The owner's key, a session user and the owner's revocation are untouched.
        r = await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers)
        assert r.status_code == 200, r.text
        r = await c.get(f"/api/v1/orgs/{a.org_id}/users", headers=session)
        assert r.status_code == 200, r.text
        keys = (await c.get(f"/api/v1/orgs/{a.org_id}/api-keys", headers=session)).json()["items"]
        agent_id = next(k["id"] for k in keys if k["role"] == "agent")
        r = await c.post(f"/api/v1/orgs/{a.org_id}/api-keys/{agent_id}/revoke", headers=a.headers)
        assert r.status_code == 200 and r.json()["revoked_at"], r.text
        assert_error(await c.get(poll, headers={"X-API-Key": agent}), 401, "AUTHENTICATION_REQUIRED")


async def test_each_credential_has_its_own_budget(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_standard_burst=2, rate_standard_per_minute=100)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        again = await bootstrap_org(app)  # a second owner key of the same org
        session = await _session(c, a.email, a.password)
        url = f"/api/v1/orgs/{a.org_id}"
        for _ in range(2):
            assert (await c.get(url, headers=a.headers)).status_code == 200
        assert_error(await c.get(url, headers=a.headers), 429, "RATE_LIMIT_EXCEEDED")
        r = await c.get(url, headers=again.headers)
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "1"
        r = await c.get(url, headers=session)
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "1"
        # A user's budget follows the user across organizations (one person, one budget).
        r = await c.get("/api/v1/orgs", headers=session)
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "0"
        assert_error(await c.get(url, headers=session), 429, "RATE_LIMIT_EXCEEDED")


async def test_stopping_an_agent_has_an_emergency_budget_of_its_own(settings_factory: Any) -> None:
    from tests.gateway.factories import add_manifest

    app = await _app(settings_factory, rate_standard_burst=2, rate_standard_per_minute=100,
                     rate_emergency_burst=4, rate_emergency_per_minute=100)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        runtime = app.state.runtime
        m1 = await add_manifest(runtime, a.org_id, "bot-one")
        m2 = await add_manifest(runtime, a.org_id, "bot-two")
        await make_key(c, a, "agent")
        keys = (await c.get(f"/api/v1/orgs/{a.org_id}/api-keys", headers=a.headers)).json()["items"]
        agent_id = next(k["id"] for k in keys if k["role"] == "agent")
        # The owner's standard budget is spent.
        assert_error(await c.get(f"/api/v1/orgs/{a.org_id}", headers=a.headers), 429, "RATE_LIMIT_EXCEEDED")
        base = f"/api/v1/orgs/{a.org_id}"
        r = await c.post(f"{base}/manifests/{m1}/suspend", json={"reason": "flooding"}, headers=a.headers)
        assert r.status_code == 200 and r.json()["status"] == "suspended", r.text
        assert r.headers["x-ratelimit-limit"] == "4" and r.headers["x-ratelimit-remaining"] == "3"
        r = await c.post(f"{base}/manifests/{m2}/revoke", json={"reason": "flooding"}, headers=a.headers)
        assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
        r = await c.post(f"{base}/api-keys/{agent_id}/revoke", headers=a.headers)
        assert r.status_code == 200, r.text
        r = await c.post(f"{base}/capability-tokens/{uuid.uuid4()}/revoke", headers=a.headers)
        assert_error(r, 404, "NOT_FOUND")  # admitted (an unknown token), not 429
        # The emergency tier has a ceiling of its own.
        r = await c.post(f"{base}/api-keys/{agent_id}/revoke", headers=a.headers)
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["retry-after"]) >= 1


def test_the_emergency_ceiling_cannot_be_set_below_a_floor() -> None:
    import pytest

    from core.settings import ConfigError, load_settings

    d = load_settings({})
    assert (d.rate_emergency_per_minute, d.rate_emergency_burst) == (600, 100)
    s = load_settings({"BASTION_RATE_EMERGENCY_PER_MINUTE": "120", "BASTION_RATE_EMERGENCY_BURST": "30"})
    assert (s.rate_emergency_per_minute, s.rate_emergency_burst) == (120, 30)
    for var, value in (("BASTION_RATE_EMERGENCY_PER_MINUTE", "59"), ("BASTION_RATE_EMERGENCY_BURST", "9")):
        with pytest.raises(ConfigError, match=var):
            load_settings({var: value})


# --- security item 6: login throttling ------------------------------------------------------
def _from(app: Any, address: str) -> Any:
    """A client whose requests come from ``address`` (the ASGI scope's client)."""
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url="http://testserver")


async def _login(c: Any, email: str, password: str) -> Any:
    return await c.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_failed_logins_are_limited_per_client_address(settings_factory: Any) -> None:
    app = await _app(settings_factory)  # the default heavy tier: 20 failures in any 10 s
    async with serve_app(app), _from(app, "203.0.113.7") as sprayer, _from(app, "198.51.100.2") as other:
        a = await bootstrap_org(app)
        statuses = [(await _login(sprayer, f"victim{i}@example.com", "Spring2024!")).status_code for i in range(40)]
        assert statuses[:20] == [401] * 20 and statuses[20:] == [429] * 20, statuses
        r = await _login(sprayer, "victim99@example.com", "Spring2024!")
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining"] == "0"
        # Refused before hashing: the right password from the sprayer's address waits too...
        assert_error(await _login(sprayer, a.email, a.password), 429, "RATE_LIMIT_EXCEEDED")
        # ...while every other address is unaffected.
        assert (await _login(other, a.email, a.password)).status_code == 200


async def test_strangers_cannot_lock_a_user_out(settings_factory: Any) -> None:
    app = await _app(settings_factory)
    async with serve_app(app), _from(app, "203.0.113.7") as x, _from(app, "198.51.100.2") as y, \
            _from(app, "192.0.2.44") as z:
        a = await bootstrap_org(app)
        for _ in range(20):
            assert_error(await _login(x, a.email, "wrong-password"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await _login(x, a.email, "wrong-password"), 429, "RATE_LIMIT_EXCEEDED")
        # The user, from their own address, logs in: the failures were not theirs.
        r = await _login(y, a.email, a.password)
        assert r.status_code == 200, r.text
        # The account's budget is spent, so a second guessing address gets one try, no more.
        assert_error(await _login(z, a.email, "another-guess"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await _login(z, a.email, "another-guess"), 429, "RATE_LIMIT_EXCEEDED")
        assert_error(await _login(z, a.email, a.password), 429, "RATE_LIMIT_EXCEEDED")
        assert (await _login(y, a.email, a.password)).status_code == 200


async def test_failed_logins_are_limited_globally(settings_factory: Any) -> None:
    app = await _app(settings_factory, login_failures_per_minute=5)
    async with serve_app(app):
        a = await bootstrap_org(app)
        clients = [_from(app, f"192.0.2.{i}") for i in range(1, 8)]
        try:
            for c in clients[:5]:  # five addresses, one failure each, five emails
                assert_error(await _login(c, f"user{id(c)}@example.com", "guess-123"), 401, "AUTHENTICATION_REQUIRED")
            # Over the global budget: an address that failed is refused, whatever the email.
            r = await _login(clients[0], "someone-else@example.com", "guess-123")
            assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
            assert_error(await _login(clients[1], a.email, a.password), 429, "RATE_LIMIT_EXCEEDED")
            # An address with no failures is still served (the right password works).
            assert (await _login(clients[5], a.email, a.password)).status_code == 200
            assert_error(await _login(clients[6], "nobody@example.com", "guess-123"), 401, "AUTHENTICATION_REQUIRED")
            assert_error(await _login(clients[6], "nobody@example.com", "guess-123"), 429, "RATE_LIMIT_EXCEEDED")
        finally:
            for c in clients:
                await c.aclose()


async def test_ipv6_clients_are_grouped_by_64(settings_factory: Any) -> None:
    app = await _app(settings_factory, rate_heavy_burst=2, rate_heavy_per_minute=100)
    async with serve_app(app), _from(app, "2001:db8:1:2::1") as one, _from(app, "2001:db8:1:2:ffff::9") as two, \
            _from(app, "2001:db8:1:3::1") as elsewhere:
        a = await bootstrap_org(app)
        assert_error(await _login(one, "p@example.com", "guess-123"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await _login(two, "q@example.com", "guess-123"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await _login(two, "r@example.com", "guess-123"), 429, "RATE_LIMIT_EXCEEDED")
        assert (await _login(elsewhere, a.email, a.password)).status_code == 200


def test_client_address_normalisation() -> None:
    from httpkit.ratelimit import client_address

    assert client_address({"client": ("203.0.113.7", 1)}) == "203.0.113.7"
    assert client_address({"client": ("::ffff:203.0.113.7", 1)}) == "203.0.113.7"
    assert client_address({"client": ("2001:db8::1", 1)}) == "2001:db8::/64"
    assert client_address({"client": None}) == "unknown"
    assert client_address({}) == "unknown"


async def test_password_hashing_is_bounded(settings_factory: Any, monkeypatch: Any) -> None:
    import asyncio
    import threading
    import time

    import store.passwords as passwords

    app = await _app(settings_factory, login_hash_concurrency=2)
    real = passwords.verify_password
    lock = threading.Lock()
    running, peak = [0], [0]

    def slow_verify(password: str, encoded: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)  # long enough for unbounded calls to overlap
        try:
            return real(password, encoded)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(passwords, "verify_password", slow_verify)
    async with serve_app(app):
        a = await bootstrap_org(app)
        clients = [_from(app, f"192.0.2.{i}") for i in range(1, 9)]
        try:
            rs = await asyncio.gather(*(_login(c, a.email, a.password if i % 2 else "wrong-pass") for i, c in enumerate(clients)))
        finally:
            for c in clients:
                await c.aclose()
    assert sorted(r.status_code for r in rs) == [200] * 4 + [401] * 4
    assert peak[0] == 2


async def test_a_full_hashing_queue_answers_429(settings_factory: Any) -> None:
    from store.passwords import Hashing

    app = await _app(settings_factory)
    async with serve_app(app) as c:
        a = await bootstrap_org(app)
        hashing = app.state.password_hashing = Hashing(1, max_waiting=0)
        async with hashing.slot():  # the only slot is taken and nobody may wait
            r = await _login(c, a.email, a.password)
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert r.headers["retry-after"] == "1"
        assert (await _login(c, a.email, a.password)).status_code == 200


def test_login_settings_come_from_the_environment() -> None:
    import pytest

    from core.settings import ConfigError, load_settings

    d = load_settings({})
    assert (d.login_failures_per_minute, d.login_hash_concurrency, d.trusted_proxies) == (600, 4, ())
    s = load_settings({"BASTION_LOGIN_FAILURES_PER_MINUTE": "50", "BASTION_LOGIN_HASH_CONCURRENCY": "1",
                       "BASTION_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1"})
    assert (s.login_failures_per_minute, s.login_hash_concurrency) == (50, 1)
    assert s.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32", "::1/128")
    for var, value in (("BASTION_LOGIN_HASH_CONCURRENCY", "0"), ("BASTION_TRUSTED_PROXIES", "proxy.local")):
        with pytest.raises(ConfigError, match=var):
            load_settings({var: value})


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(settings_factory: Any) -> None:
    """``bastion serve`` hands BASTION_TRUSTED_PROXIES to uvicorn's proxy-headers middleware;
    here the same middleware wraps the app, with the options the CLI computes."""
    import httpx
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from bastion.cli import uvicorn_proxy_options
    from core.settings import load_settings

    assert uvicorn_proxy_options(load_settings({})) == {"proxy_headers": False}
    opts = uvicorn_proxy_options(load_settings({"BASTION_TRUSTED_PROXIES": "10.0.0.0/8"}))
    assert opts == {"proxy_headers": True, "forwarded_allow_ips": ["10.0.0.0/8"]}
    app = await _app(settings_factory, rate_heavy_burst=2, rate_heavy_per_minute=100)
    wrapped = ProxyHeadersMiddleware(app, trusted_hosts=opts["forwarded_allow_ips"])

    def via(peer: str) -> Any:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped, client=(peer, 1)), base_url="http://t")

    async with serve_app(app), via("10.1.2.3") as proxy, via("198.51.100.9") as direct:
        def bad(i: int) -> dict[str, str]:
            return {"email": f"x{i}@example.com", "password": "guess-123"}

        for client in ("203.0.113.1", "203.0.113.2"):  # two clients behind the proxy: separate budgets
            for i in range(2):
                r = await proxy.post("/api/v1/auth/login", json=bad(i), headers={"X-Forwarded-For": client})
                assert r.status_code == 401, r.text
        r = await proxy.post("/api/v1/auth/login", json=bad(3), headers={"X-Forwarded-For": "203.0.113.1"})
        assert r.status_code == 429
        # A peer that is not a trusted proxy cannot choose its address.
        statuses = []
        for i, forged in enumerate(("192.0.2.1", "192.0.2.2", "192.0.2.3")):
            r = await direct.post("/api/v1/auth/login", json=bad(10 + i), headers={"X-Forwarded-For": forged})
            statuses.append(r.status_code)
        assert statuses == [401, 401, 429]
