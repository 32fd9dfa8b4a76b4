from __future__ import annotations

from typing import Any

from tests.conftest import Org, assert_error, make_key


async def test_login_and_org_lifecycle(client: Any, org: Org) -> None:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert r.json()["token_type"] == "bearer"
    auth = {"Authorization": f"Bearer {token}"}
    r = await client.post("/api/v1/orgs", json={"name": "Second", "slug": "second"}, headers=auth)
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/orgs", json={"name": "Second", "slug": "second"}, headers=auth)
    assert_error(r, 409, "CONFLICT")
    r = await client.get("/api/v1/orgs", headers=auth)
    assert r.json()["total"] == 2


async def test_revoked_key_is_401_at_once(client: Any, org: Org) -> None:
    key = await make_key(client, org, "viewer")
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": key})
    assert r.status_code == 200
    keys = (await client.get(f"/api/v1/orgs/{org.org_id}/api-keys", headers=org.headers)).json()["items"]
    kid = next(k["id"] for k in keys if k["role"] == "viewer")
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys/{kid}/revoke", headers=org.headers)
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": key})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")
