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


# --- security item 13: joining an organization is an invitation ------------------------------
async def _invite(c: Any, org: Any, body: dict[str, Any]) -> Any:
    return await c.post(f"/api/v1/orgs/{org.org_id}/users", json=body, headers=org.headers)


async def test_inviting_answers_alike_whether_or_not_the_account_exists(client: Any, org: Any, other_org: Any) -> None:
    victim = other_org.email  # a user of another tenant
    answers = []
    for body in ({"email": victim, "role": "viewer"}, {"email": "nobody@example.com", "role": "viewer"},
                 {"email": "someone@globex.com", "role": "viewer"}):
        r = await _invite(client, org, body)
        assert r.status_code == 202, r.text
        answers.append(r.json())
    shapes = [{k: (type(v).__name__) for k, v in a.items() if k not in ("email",)} for a in answers]
    assert shapes[0] == shapes[1] == shapes[2]
    for a in answers:
        assert "user_id" not in a and a["status"] == "pending" and a["org_id"] == org.org_id
        assert set(a) == {"invitation_id", "org_id", "email", "role", "status", "invited_by", "created_at", "expires_at", "decided_at"}
    # Nobody was enrolled: the victim is not a member, and sees only their own organization.
    members = (await client.get(f"/api/v1/orgs/{org.org_id}/users", headers=org.headers)).json()["items"]
    assert [m["email"] for m in members] == [org.email]
    victim_auth = await _session(client, victim, other_org.password)
    assert [o["org_id"] for o in (await client.get("/api/v1/orgs", headers=victim_auth)).json()["items"]] == [other_org.org_id]
    assert_error(await client.get(f"/api/v1/orgs/{org.org_id}", headers=victim_auth), 404, "NOT_FOUND")


async def test_a_password_for_an_existing_account_is_ignored_and_answers_alike(client: Any, org: Any, other_org: Any) -> None:
    r_existing = await _invite(client, org, {"email": other_org.email, "role": "viewer", "password": "attacker-pass-1"})
    r_new = await _invite(client, org, {"email": "fresh@example.com", "role": "viewer", "password": "fresh-pass-123"})
    assert r_existing.status_code == r_new.status_code == 202
    assert set(r_existing.json()) == set(r_new.json())
    # The existing account keeps its own password; the new one was created with the given one.
    assert (await _login(client, other_org.email, "attacker-pass-1")).status_code == 401
    assert (await _login(client, other_org.email, other_org.password)).status_code == 200
    fresh = await _session(client, "fresh@example.com", "fresh-pass-123")
    # ...and is a member of nothing until it accepts.
    assert (await client.get("/api/v1/orgs", headers=fresh)).json() == {"items": [], "total": 0}


async def test_the_invitee_lists_and_accepts_then_is_a_member(client: Any, org: Any, other_org: Any) -> None:
    r = await _invite(client, org, {"email": other_org.email, "role": "approver"})
    inv = r.json()["invitation_id"]
    auth = await _session(client, other_org.email, other_org.password)
    mine = (await client.get("/api/v1/invitations", headers=auth)).json()
    assert mine["total"] == 1
    (item,) = mine["items"]
    assert (item["invitation_id"], item["org_id"], item["org_slug"], item["role"]) == (inv, org.org_id, "acme", "approver")
    r = await client.post(f"/api/v1/invitations/{inv}/accept", headers=auth)
    assert r.status_code == 200 and r.json()["org_id"] == org.org_id and r.json()["role"] == "approver", r.text
    assert (await client.get(f"/api/v1/orgs/{org.org_id}", headers=auth)).status_code == 200
    members = (await client.get(f"/api/v1/orgs/{org.org_id}/users", headers=org.headers)).json()["items"]
    assert {(m["email"], m["role"]) for m in members} == {(org.email, "owner"), (other_org.email, "approver")}
    listed = (await client.get(f"/api/v1/orgs/{org.org_id}/invitations", headers=org.headers)).json()["items"]
    assert [(i["invitation_id"], i["status"]) for i in listed] == [(inv, "accepted")] and listed[0]["decided_at"]
    assert (await client.get("/api/v1/invitations", headers=auth)).json()["total"] == 0
    assert_error(await client.post(f"/api/v1/invitations/{inv}/accept", headers=auth), 409, "CONFLICT")
    # Already a member: a new invitation is refused (the organization's own knowledge).
    assert_error(await _invite(client, org, {"email": other_org.email, "role": "viewer"}), 409, "CONFLICT")


async def test_decline_revoke_and_strangers(client: Any, org: Any, other_org: Any) -> None:
    inv = (await _invite(client, org, {"email": other_org.email, "role": "viewer"})).json()["invitation_id"]
    assert_error(await _invite(client, org, {"email": other_org.email, "role": "viewer"}), 409, "CONFLICT")  # pending
    auth = await _session(client, other_org.email, other_org.password)
    stranger = await _session(client, org.email, org.password)  # not the invitee
    for path in (f"/api/v1/invitations/{inv}/accept", f"/api/v1/invitations/{inv}/decline",
                 "/api/v1/invitations/not-an-id/accept"):
        assert_error(await client.post(path, headers=stranger), 404, "NOT_FOUND")
    assert (await client.get("/api/v1/invitations", headers=stranger)).json()["total"] == 0
    # API keys belong to an organization, not a person.
    assert_error(await client.get("/api/v1/invitations", headers=other_org.headers), 403, "PERMISSION_DENIED")
    assert_error(await client.post(f"/api/v1/invitations/{inv}/accept", headers=other_org.headers), 403, "PERMISSION_DENIED")
    assert_error(await client.get("/api/v1/invitations"), 401, "AUTHENTICATION_REQUIRED")
    r = await client.post(f"/api/v1/invitations/{inv}/decline", headers=auth)
    assert r.status_code == 204, r.text
    assert_error(await client.post(f"/api/v1/invitations/{inv}/accept", headers=auth), 409, "CONFLICT")
    assert_error(await client.get(f"/api/v1/orgs/{org.org_id}", headers=auth), 404, "NOT_FOUND")
    # Invited again, then revoked by the organization before it is accepted.
    inv2 = (await _invite(client, org, {"email": other_org.email, "role": "viewer"})).json()["invitation_id"]
    base = f"/api/v1/orgs/{org.org_id}/invitations"
    assert_error(await client.delete(f"{base}/{inv2}", headers=other_org.headers), 404, "NOT_FOUND")  # another org's key
    assert (await client.delete(f"{base}/{inv2}", headers=org.headers)).status_code == 204
    assert_error(await client.delete(f"{base}/{inv2}", headers=org.headers), 409, "CONFLICT")
    assert_error(await client.post(f"/api/v1/invitations/{inv2}/accept", headers=auth), 409, "CONFLICT")
    statuses = {i["invitation_id"]: i["status"] for i in (await client.get(base, headers=org.headers)).json()["items"]}
    assert statuses == {inv: "declined", inv2: "revoked"}


async def test_an_expired_invitation_cannot_be_accepted_and_can_be_renewed(client: Any, org: Any, other_org: Any) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from core.clock import utcnow
    from store.models import Invitation

    inv = (await _invite(client, org, {"email": other_org.email, "role": "viewer"})).json()["invitation_id"]
    async with client.app.state.runtime.sessions() as session, session.begin():
        await session.execute(update(Invitation).where(Invitation.id == inv).values(expires_at=utcnow() - timedelta(seconds=1)))
    auth = await _session(client, other_org.email, other_org.password)
    assert (await client.get("/api/v1/invitations", headers=auth)).json()["total"] == 0
    body = assert_error(await client.post(f"/api/v1/invitations/{inv}/accept", headers=auth), 409, "CONFLICT")
    assert "expired" in body["message"]
    r = await _invite(client, org, {"email": other_org.email, "role": "viewer"})
    assert r.status_code == 202 and r.json()["invitation_id"] != inv
    assert (await client.post(f"/api/v1/invitations/{r.json()['invitation_id']}/accept", headers=auth)).status_code == 200


async def test_only_owners_invite_owners_and_admins(client: Any, org: Any) -> None:
    from tests.members import add_member

    await add_member(client, org, "adm@acme.com", "admin")
    adm = await _session(client, "adm@acme.com", "member-pass-1")
    r = await client.post(f"/api/v1/orgs/{org.org_id}/users", json={"email": "x@acme.com", "role": "owner"}, headers=adm)
    assert_error(r, 403, "PERMISSION_DENIED")
    r = await client.post(f"/api/v1/orgs/{org.org_id}/users", json={"email": "x@acme.com", "role": "viewer"}, headers=adm)
    assert r.status_code == 202
    owner_inv = (await _invite(client, org, {"email": "y@acme.com", "role": "admin"})).json()["invitation_id"]
    assert_error(await client.delete(f"/api/v1/orgs/{org.org_id}/invitations/{owner_inv}", headers=adm), 403, "PERMISSION_DENIED")


async def test_invitations_are_audited(client: Any, org: Any, other_org: Any) -> None:
    async def changes() -> list[dict[str, Any]]:
        await client.app.state.audit.flush()
        r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/events", params={"limit": 100}, headers=org.headers)
        assert r.status_code == 200, r.text
        return [e for e in reversed(r.json()["items"]) if e["kind"].startswith(("member.", "invitation."))
                and e["details"].get("via") != "bootstrap"]  # the org's own creation is audited too

    inv = (await _invite(client, org, {"email": other_org.email, "role": "viewer", "password": "ignored-pass-1"})).json()["invitation_id"]
    auth = await _session(client, other_org.email, other_org.password)
    assert (await client.post(f"/api/v1/invitations/{inv}/accept", headers=auth)).status_code == 200
    inv2 = (await _invite(client, org, {"email": "carol@example.com", "role": "viewer"})).json()["invitation_id"]
    assert (await client.delete(f"/api/v1/orgs/{org.org_id}/invitations/{inv2}", headers=org.headers)).status_code == 204
    events = await changes()
    assert [e["kind"] for e in events] == ["member.invited", "member.added", "member.invited", "invitation.revoked"]
    invited, added = events[0], events[1]
    assert invited["actor"].startswith("api_key:") and invited["details"]["invitation_id"] == inv
    assert invited["details"]["email"] == other_org.email and invited["details"]["role"] == "viewer"
    assert "ignored-pass-1" not in str(events)
    assert added["actor"] == f"user:{other_org.email}"
    assert added["details"]["user_id"] == other_org.user_id and added["details"]["invitation_id"] == inv


# --- contract gap: the CLI does not depend on the working directory --------------------------
def _cli_env(monkeypatch: Any, home: Any) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("BASTION_") or var == "XDG_DATA_HOME":
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(home))


def _boot(capsys: Any) -> dict[str, str]:
    import json

    from bastion.cli import main

    assert main(["bootstrap", "--org-slug", "initech", "--org-name", "Initech", "--admin-email", "boss@initech.com",
                 "--admin-password", "tps-report-99"]) == 0
    out, err = capsys.readouterr()
    return {**json.loads(out), "err": err}


def test_bootstrap_from_any_folder_uses_one_absolute_data_directory(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    import asyncio

    from core.settings import load_settings

    home = tmp_path / "home"
    data = home / ".local" / "share" / "bastion"
    _cli_env(monkeypatch, home)
    first_dir, other_dir = tmp_path / "repo", tmp_path / "elsewhere"
    first_dir.mkdir()
    other_dir.mkdir()
    monkeypatch.chdir(first_dir)
    one = _boot(capsys)
    monkeypatch.chdir(other_dir)
    two = _boot(capsys)
    # The same organization, in the same database: no second one was made in the other folder.
    assert (two["org_id"], two["user_id"]) == (one["org_id"], one["user_id"])
    assert not (first_dir / "data").exists() and not (other_dir / "data").exists()
    assert (data / "bastion.db").is_file() and (data / "api-key-pepper").is_file()
    # Every command names the data directory and database it used (stderr; stdout stays JSON).
    for err in (one["err"], two["err"]):
        assert err.strip().splitlines()[-1] == f"bastion: data directory {data} (database sqlite+aiosqlite:///{data}/bastion.db)"

    async def key_works() -> int:
        from bastion.app import create_app
        from tests.conftest import serve_app

        app = create_app(load_settings())  # the server, started from yet another folder
        async with serve_app(app) as c:
            r = await c.get(f"/api/v1/orgs/{one['org_id']}", headers={"X-API-Key": two["api_key"]})
            return r.status_code

    monkeypatch.chdir(tmp_path)
    assert asyncio.run(key_works()) == 200


def test_policy_org_takes_a_slug_or_an_id(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    import json

    from bastion.cli import main

    _cli_env(monkeypatch, tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    org_id = _boot(capsys)["org_id"]
    for ref in ("initech", org_id):
        out_file = tmp_path / f"rules-{len(ref)}.yaml"
        assert main(["policy", "export", "--org", ref, "--output", str(out_file)]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["exported"] == str(out_file) and "bastion: data directory" in err
    assert main(["policy", "export", "--org", "globex"]) == 1
    out, err = capsys.readouterr()
    data = tmp_path / "home" / ".local" / "share" / "bastion"
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "no organization with slug or id 'globex'" in err and str(data / "bastion.db") in err


def test_migrate_and_keys_name_the_data_directory_and_a_relative_one_is_made_absolute(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    import json

    from bastion.cli import main

    _cli_env(monkeypatch, tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASTION_DATA_DIR", "rel/data")
    assert main(["migrate"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["migrated"] is True
    assert err.strip() == f"bastion: data directory {tmp_path / 'rel' / 'data'} (database sqlite+aiosqlite:///{tmp_path}/rel/data/bastion.db)"
    assert main(["keys", "list"]) == 0
    assert capsys.readouterr().err.startswith(f"bastion: data directory {tmp_path / 'rel' / 'data'} ")


def test_a_database_left_in_the_old_default_is_pointed_at(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    from bastion.cli import main

    _cli_env(monkeypatch, tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bastion.db").write_bytes(b"")
    assert main(["keys", "list"]) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'bastion.db'} is not used" in err and f"BASTION_DATA_DIR={tmp_path / 'data'}" in err


def test_serve_logs_the_data_directory_at_start_up(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    import json
    import logging

    import uvicorn

    from bastion.cli import main

    _cli_env(monkeypatch, tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["serve"]) == 0
    finally:  # serve configured logging to this test's captured stdout
        root.handlers[:] = handlers
        root.setLevel(level)
    assert calls and calls[0]["proxy_headers"] is False
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    serving = next(line for line in lines if line.get("msg") == "serving")
    assert serving["data_dir"] == str(tmp_path / "home" / ".local" / "share" / "bastion")


def test_default_data_dir() -> None:
    from pathlib import Path

    from core.settings import default_data_dir, load_settings

    assert default_data_dir({"XDG_DATA_HOME": "/xdg", "HOME": "/home/a"}) == Path("/xdg/bastion")
    assert default_data_dir({"XDG_DATA_HOME": "relative", "HOME": "/home/a"}) == Path("/home/a/.local/share/bastion")
    assert default_data_dir({"HOME": "/home/a"}) == Path("/home/a/.local/share/bastion")
    assert default_data_dir({"HOME": "/home/a"}).is_absolute()
    assert load_settings({"BASTION_DATA_DIR": "~/b", "HOME": "/home/a"}).data_dir == Path.home() / "b"
