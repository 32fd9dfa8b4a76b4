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
