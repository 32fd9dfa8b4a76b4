"""Organizations, members, API keys, roles and organization isolation."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from store.bus_messages import ApiKeyRevoked, Change
from tests.conftest import Org, assert_error, bootstrap_org, make_key, serve_app
from tests.members import add_member


async def _session(client: Any, email: str, password: str) -> dict[str, str]:
    r = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _add_member(client: Any, org: Org, email: str, role: str, headers: dict[str, str] | None = None) -> Any:
    """The invitation request alone (202, or the error); ``add_member`` also accepts it."""
    return await client.post(
        f"/api/v1/orgs/{org.org_id}/users",
        json={"email": email, "password": "member-pass-1", "role": role},
        headers=headers or org.headers,
    )


# --- organizations -----------------------------------------------------------------------
async def test_create_org_makes_the_user_owner_and_duplicate_slug_is_409(client: Any, org: Org) -> None:
    auth = await _session(client, org.email, org.password)
    r = await client.post("/api/v1/orgs", json={"name": "Beta Corp", "slug": "beta"}, headers=auth)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["slug"] == "beta" and new["name"] == "Beta Corp" and new["role"] == "owner"
    r = await client.get(f"/api/v1/orgs/{new['org_id']}/users", headers=auth)
    assert [(m["email"], m["role"]) for m in r.json()["items"]] == [(org.email, "owner")]
    r = await client.post("/api/v1/orgs", json={"name": "Beta again", "slug": "beta"}, headers=auth)
    assert_error(r, 409, "CONFLICT")
    r = await client.post("/api/v1/orgs", json={"name": "Acme copy", "slug": "acme"}, headers=auth)
    assert_error(r, 409, "CONFLICT")
    r = await client.get("/api/v1/orgs", headers=auth)
    assert r.json()["total"] == 2
    assert {o["slug"] for o in r.json()["items"]} == {"acme", "beta"}


async def test_create_org_validates_and_needs_a_user(client: Any, org: Org) -> None:
    auth = await _session(client, org.email, org.password)
    r = await client.post("/api/v1/orgs", json={"name": "", "slug": "Bad Slug"}, headers=auth)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in body["details"]} == {"name", "slug"}
    r = await client.post("/api/v1/orgs", json={"name": "K", "slug": "by-key"}, headers=org.headers)
    assert_error(r, 403, "PERMISSION_DENIED")
    r = await client.post("/api/v1/orgs", json={"name": "K", "slug": "anon"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_list_orgs_with_an_api_key_is_its_own_org_only(client: Any, org: Org, other_org: Org) -> None:
    r = await client.get("/api/v1/orgs", headers=org.headers)
    assert r.status_code == 200
    assert [o["org_id"] for o in r.json()["items"]] == [org.org_id] and r.json()["total"] == 1


# --- API keys ----------------------------------------------------------------------------
async def test_api_key_shape_and_storage(client: Any, org: Org) -> None:
    from store import accounts
    from store.api_keys import hash_key

    r = await client.post(
        f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "agent-1", "role": "agent", "uapk_ids": ["bot-b", "bot-a", "bot-a"]},
        headers=org.headers,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "key", "name", "prefix", "role", "uapk_ids", "created_at"}
    secret = created["key"]
    assert secret.startswith("bst_") and len(secret) >= 4 + 43  # 32 random bytes, base64url
    assert secret.startswith(created["prefix"]) and len(created["prefix"]) < len(secret)
    assert created["role"] == "agent" and created["uapk_ids"] == ["bot-a", "bot-b"]
    assert created["created_at"].endswith("Z")
    # Listed without the secret.
    r = await client.get(f"/api/v1/orgs/{org.org_id}/api-keys", headers=org.headers)
    listed = next(k for k in r.json()["items"] if k["id"] == created["id"])
    assert "key" not in listed and secret not in r.text
    assert listed["revoked_at"] is None and listed["prefix"] == created["prefix"]
    # Stored only as the HMAC: the secret is nowhere in the row.
    rt = client.app.state.runtime
    async with rt.sessions() as session:
        row = await accounts.find_api_key(session, hash_key(rt.pepper, secret))
    assert row is not None and row.id == created["id"]
    assert secret not in repr(vars(row)) and row.key_hash == hash_key(rt.pepper, secret)
    # Keys are random.
    other = await make_key(client, org, "viewer")
    assert other != secret and other[4:] != secret[4:]


async def test_agent_key_uapk_ids_validation(client: Any, org: Org) -> None:
    url = f"/api/v1/orgs/{org.org_id}/api-keys"
    r = await client.post(url, json={"name": "v", "role": "viewer", "uapk_ids": ["bot-a"]}, headers=org.headers)
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"][0]["field"] == "uapk_ids"
    r = await client.post(url, json={"name": "a", "role": "agent", "uapk_ids": ["ok-id", "NOT OK"]}, headers=org.headers)
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"][0]["field"] == "uapk_ids.1"


async def test_revoked_key_is_401_at_once_and_revocation_is_idempotent(client: Any, org: Org) -> None:
    key = await make_key(client, org, "viewer")
    assert (await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": key})).status_code == 200
    items = (await client.get(f"/api/v1/orgs/{org.org_id}/api-keys", headers=org.headers)).json()["items"]
    kid = next(k["id"] for k in items if k["role"] == "viewer")
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys/{kid}/revoke", headers=org.headers)
    assert r.status_code == 200 and r.json()["revoked_at"]
    first = r.json()["revoked_at"]
    assert_error(await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": key}), 401, "AUTHENTICATION_REQUIRED")
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys/{kid}/revoke", headers=org.headers)
    assert r.status_code == 200 and r.json()["revoked_at"] == first


async def test_revocation_bumps_the_org_version_and_is_announced(client: Any, org: Org) -> None:
    from store.changes import org_versions

    rt = client.app.state.runtime
    seen: list[Change] = []

    async def listen(message: Change) -> None:
        seen.append(message)

    rt.bus.subscribe(listen)
    key = await make_key(client, org, "viewer")
    async with rt.sessions() as session:
        before = (await org_versions(session)).get(org.org_id, 0)
    kid = next(k["id"] for k in (await client.get(f"/api/v1/orgs/{org.org_id}/api-keys", headers=org.headers)).json()["items"] if k["role"] == "viewer")
    await client.post(f"/api/v1/orgs/{org.org_id}/api-keys/{kid}/revoke", headers=org.headers)
    async with rt.sessions() as session:
        after = (await org_versions(session))[org.org_id]
    assert after == before + 1
    msgs = [m for m in seen if isinstance(m, ApiKeyRevoked)]
    assert msgs and msgs[0].org_id == org.org_id and msgs[0].key_id == kid and msgs[0].version == after
    assert key not in repr(msgs)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_revocation_reaches_a_second_app_sharing_redis(settings: Any) -> None:
    """Two processes' worth of app on one PostgreSQL and one Redis: a key cached by app B is
    refused by B as soon as A revokes it (the change bus), not after the cache TTL."""
    from bastion.app import create_app
    from store.api_keys import hash_key

    app_a, app_b = create_app(settings), create_app(settings)
    async with serve_app(app_a) as a, serve_app(app_b) as b:
        org = await bootstrap_org(app_a)
        key = await make_key(a, org, "viewer")
        assert (await b.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": key})).status_code == 200
        key_hash = hash_key(app_b.state.runtime.pepper, key)
        assert key_hash in app_b.state.authenticator._cache  # B would serve it from cache
        got = asyncio.Event()

        async def on_change(message: Change) -> None:
            if isinstance(message, ApiKeyRevoked):  # only through Redis: A published it
                got.set()

        app_b.state.runtime.bus.subscribe(on_change)
        kid = next(k["id"] for k in (await a.get(f"/api/v1/orgs/{org.org_id}/api-keys", headers=org.headers)).json()["items"] if k["role"] == "viewer")
        r = await a.post(f"/api/v1/orgs/{org.org_id}/api-keys/{kid}/revoke", headers=org.headers)
        assert r.status_code == 200
        await asyncio.wait_for(got.wait(), 10)
        assert key_hash not in app_b.state.authenticator._cache
        r = await b.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": key})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_rate_limit_is_shared_by_apps_sharing_redis(settings_factory: Any) -> None:
    from bastion.app import create_app

    s = settings_factory(rate_standard_burst=2, rate_standard_per_minute=100)
    app_a, app_b = create_app(s), create_app(s)
    async with serve_app(app_a) as a, serve_app(app_b) as b:
        org = await bootstrap_org(app_a)
        assert (await a.get(f"/api/v1/orgs/{org.org_id}", headers=org.headers)).status_code == 200
        assert (await b.get(f"/api/v1/orgs/{org.org_id}", headers=org.headers)).status_code == 200
        assert_error(await a.get(f"/api/v1/orgs/{org.org_id}", headers=org.headers), 429, "RATE_LIMIT_EXCEEDED")


async def test_garbage_api_keys_are_401(client: Any, org: Org) -> None:
    for bad in ("bst_", "bst_" + "A" * 43, "xyz_" + org.owner_key[4:], org.owner_key + "x", org.owner_key[:-1], "bst_" + "a" * 500):
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": bad})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


# --- roles -------------------------------------------------------------------------------
async def _key_id(client: Any, org: Org, role: str) -> str:
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": f"t-{role}", "role": role}, headers=org.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("role", ["viewer", "approver", "policy_author", "agent"])
async def test_non_admins_cannot_manage_keys_or_users(client: Any, org: Org, role: str) -> None:
    h = {"X-API-Key": await make_key(client, org, role)}
    base = f"/api/v1/orgs/{org.org_id}"
    target = await _key_id(client, org, "viewer")
    member = await add_member(client, org, "m@acme.com", "viewer")
    attempts = [
        client.post(f"{base}/api-keys", json={"name": "x", "role": "viewer"}, headers=h),
        client.post(f"{base}/api-keys/{target}/revoke", headers=h),
        client.post(f"{base}/users", json={"email": "n@acme.com", "password": "pass-word-1", "role": "viewer"}, headers=h),
        client.patch(f"{base}/users/{member}", json={"role": "approver"}, headers=h),
        client.delete(f"{base}/users/{member}", headers=h),
    ]
    for coro in attempts:
        assert_error(await coro, 403, "PERMISSION_DENIED")
    reads = [client.get(base, headers=h), client.get(f"{base}/users", headers=h), client.get(f"{base}/api-keys", headers=h)]
    for coro in reads:
        r = await coro
        if role == "agent":
            assert_error(r, 403, "PERMISSION_DENIED")  # agents call the gateway, not the management API
        else:
            assert r.status_code == 200, r.text


async def test_admin_manages_non_privileged_roles_only(client: Any, org: Org) -> None:
    h = {"X-API-Key": await make_key(client, org, "admin")}
    base = f"/api/v1/orgs/{org.org_id}"
    for role in ("viewer", "approver", "policy_author", "agent"):
        r = await client.post(f"{base}/api-keys", json={"name": role, "role": role}, headers=h)
        assert r.status_code == 201, (role, r.text)
    for role in ("owner", "admin"):
        r = await client.post(f"{base}/api-keys", json={"name": role, "role": role}, headers=h)
        assert_error(r, 403, "PERMISSION_DENIED")
    for role in ("viewer", "approver", "policy_author"):
        await add_member(client, org, f"{role}@acme.com", role, headers=h)
    for role in ("owner", "admin"):
        assert_error(await _add_member(client, org, f"new-{role}@acme.com", role, h), 403, "PERMISSION_DENIED")
    viewer = (await client.get(f"{base}/users", headers=h)).json()["items"]
    vid = next(m["user_id"] for m in viewer if m["email"] == "viewer@acme.com")
    # Promote to admin: owner-only. Demote the owner: owner-only. Revoke an owner key: owner-only.
    assert_error(await client.patch(f"{base}/users/{vid}", json={"role": "admin"}, headers=h), 403, "PERMISSION_DENIED")
    assert_error(await client.patch(f"{base}/users/{org.user_id}", json={"role": "viewer"}, headers=h), 403, "PERMISSION_DENIED")
    assert_error(await client.delete(f"{base}/users/{org.user_id}", headers=h), 403, "PERMISSION_DENIED")
    owner_key = await _key_id(client, org, "owner")
    assert_error(await client.post(f"{base}/api-keys/{owner_key}/revoke", headers=h), 403, "PERMISSION_DENIED")
    r = await client.patch(f"{base}/users/{vid}", json={"role": "approver"}, headers=h)
    assert r.status_code == 200 and r.json()["role"] == "approver"
    assert (await client.delete(f"{base}/users/{vid}", headers=h)).status_code == 204
    viewer_key = await _key_id(client, org, "viewer")
    assert (await client.post(f"{base}/api-keys/{viewer_key}/revoke", headers=h)).status_code == 200
    # The owner key still works: the admin's attempt did not revoke it.
    assert (await client.get(base, headers=org.headers)).status_code == 200


async def test_owner_manages_admins_and_owners(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}"
    await add_member(client, org, "boss@acme.com", "owner")
    adm = await add_member(client, org, "adm@acme.com", "admin")
    assert (await client.post(f"{base}/api-keys", json={"name": "o", "role": "owner"}, headers=org.headers)).status_code == 201
    assert (await client.post(f"{base}/api-keys", json={"name": "a", "role": "admin"}, headers=org.headers)).status_code == 201
    r = await client.patch(f"{base}/users/{adm}", json={"role": "viewer"}, headers=org.headers)
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    assert (await client.delete(f"{base}/users/{adm}", headers=org.headers)).status_code == 204
    r = await client.get(f"{base}/users", headers=org.headers)
    assert {m["email"] for m in r.json()["items"]} == {org.email, "boss@acme.com"}


async def test_last_owner_cannot_be_removed_or_demoted(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}"
    r = await client.patch(f"{base}/users/{org.user_id}", json={"role": "admin"}, headers=org.headers)
    assert_error(r, 409, "CONFLICT")
    assert_error(await client.delete(f"{base}/users/{org.user_id}", headers=org.headers), 409, "CONFLICT")
    # With a second owner, one of them may go.
    second = await add_member(client, org, "co@acme.com", "owner")
    r = await client.patch(f"{base}/users/{org.user_id}", json={"role": "admin"}, headers=org.headers)
    assert r.status_code == 200
    assert_error(await client.delete(f"{base}/users/{second}", headers=org.headers), 409, "CONFLICT")


async def test_member_validation_and_duplicates(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}/users"
    r = await client.post(base, json={"email": "not-an-email", "password": "short", "role": "viewer"}, headers=org.headers)
    assert {d["field"] for d in assert_error(r, 400, "VALIDATION_ERROR")["details"]} == {"email", "password"}
    # No password for a new email: an invitation like any other (test_fixes_accounts.py).
    r = await client.post(base, json={"email": "new@acme.com", "role": "viewer"}, headers=org.headers)
    assert r.status_code == 202, r.text
    r = await client.post(base, json={"email": "x@acme.com", "password": "pass-word-1", "role": "root"}, headers=org.headers)
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"][0]["field"] == "role"
    await add_member(client, org, "dup@acme.com", "viewer")
    assert_error(await _add_member(client, org, "DUP@acme.com", "viewer"), 409, "CONFLICT")
    items = (await client.get(base, headers=org.headers)).json()
    assert items["total"] == 2 and {m["role"] for m in items["items"]} == {"owner", "viewer"}


# --- isolation ---------------------------------------------------------------------------
def _same(a: Any, b: Any) -> None:
    ba, bb = assert_error(a, 404, "NOT_FOUND"), assert_error(b, 404, "NOT_FOUND")
    assert {**ba, "request_id": None} == {**bb, "request_id": None}
    assert a.headers.get("content-type") == b.headers.get("content-type")


async def test_another_orgs_ids_answer_exactly_like_missing_ones(client: Any, org: Org, other_org: Org) -> None:
    """Every accounts endpoint: another org's org_id, user_id or key_id is a 404 with the same
    body as an id that does not exist, for an API key and for a session."""
    theirs_key = await _key_id(client, other_org, "viewer")
    theirs_user = await add_member(client, other_org, "them@globex.com", "viewer")
    missing = "00000000-0000-4000-8000-000000000000"
    mine = f"/api/v1/orgs/{org.org_id}"
    session = await _session(client, org.email, org.password)
    for h in (org.headers, session):
        for tmpl in (
            ("GET", "/api/v1/orgs/{o}", None),
            ("GET", "/api/v1/orgs/{o}/users", None),
            ("POST", "/api/v1/orgs/{o}/users", {"email": "z@acme.com", "password": "pass-word-1", "role": "viewer"}),
            ("PATCH", "/api/v1/orgs/{o}/users/" + theirs_user, {"role": "viewer"}),
            ("DELETE", "/api/v1/orgs/{o}/users/" + theirs_user, None),
            ("GET", "/api/v1/orgs/{o}/api-keys", None),
            ("POST", "/api/v1/orgs/{o}/api-keys", {"name": "x", "role": "viewer"}),
            ("POST", "/api/v1/orgs/{o}/api-keys/" + theirs_key + "/revoke", None),
        ):
            method, path, body = tmpl
            kw: dict[str, Any] = {"headers": h}
            if body is not None:
                kw["json"] = body
            theirs = await client.request(method, path.format(o=other_org.org_id), **kw)
            nothing = await client.request(method, path.format(o=missing), **kw)
            _same(theirs, nothing)
        # Their user / key under my org id: as if it did not exist.
        for method, theirs_path, missing_path, body in (
            ("PATCH", f"{mine}/users/{theirs_user}", f"{mine}/users/{missing}", {"role": "viewer"}),
            ("DELETE", f"{mine}/users/{theirs_user}", f"{mine}/users/{missing}", None),
            ("POST", f"{mine}/api-keys/{theirs_key}/revoke", f"{mine}/api-keys/{missing}/revoke", None),
        ):
            kw = {"headers": h}
            if body is not None:
                kw["json"] = body
            _same(await client.request(method, theirs_path, **kw), await client.request(method, missing_path, **kw))
    # Nothing of theirs changed.
    r = await client.get(f"/api/v1/orgs/{other_org.org_id}/api-keys", headers=other_org.headers)
    assert all(k["revoked_at"] is None for k in r.json()["items"])
    r = await client.get(f"/api/v1/orgs/{other_org.org_id}/users", headers=other_org.headers)
    assert {m["email"] for m in r.json()["items"]} == {other_org.email, "them@globex.com"}
    assert all(m["role"] == "viewer" or m["email"] == other_org.email for m in r.json()["items"])
