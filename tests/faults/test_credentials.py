"""Credentials under attack (in-process app on PostgreSQL + Redis).

* The JWT forgery matrix (alg none, HS256 keyed with the public key, stripped signature,
  tampered payload, expired, not yet valid, wrong aud, wrong iss, wrong typ, unknown kid,
  right kid with another key) on every endpoint class that takes a token: the management
  API's session bearer, the gateway's capability_token and override_token, the approvals
  endpoints, and the token verification endpoint -> 401 or deny, never access. The genuine
  token is the control: it works.
* Revoked API keys -> 401 everywhere (management API, gateway, agent approvals, token
  issuance); rotated-and-retired signing keys -> their tokens stop working.
* The cross-org matrix: every operation of the OpenAPI document under /orgs/{org_id}, with
  another organization's org id or resource ids -> 404, byte-identical (request id aside)
  to the answer for an id that does not exist.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import Org, assert_error, bootstrap_org, make_key
from tests.faults.helpers import manifest_doc
from tests.gateway.factories import action, add_manifest
from tests.members import add_member

EXECUTE = "/api/v1/gateway/execute"


@pytest.fixture
def backend() -> str:
    return "postgres"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def forgeries(genuine: str, runtime: Any) -> dict[str, str]:
    """Every way to forge ``genuine`` (a real Bastion token)."""
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    key = runtime.keys.signing_key
    now = int(time.time())
    public_pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def resign(hdr: dict[str, Any] | None = None, private: Any = None, **changes: Any) -> str:
        body = {**claims, **changes}
        body = {k: v for k, v in body.items() if v is not None}
        h = {"typ": header["typ"], "kid": header["kid"], **(hdr or {})}
        return jwt.encode(body, private or key.private, algorithm="EdDSA", headers=h)

    def unsigned(alg: str, secret: bytes | None) -> str:
        h = _b64(json.dumps({**header, "alg": alg}).encode())
        p = genuine.split(".")[1]
        sig = "" if secret is None else _b64(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest())
        return f"{h}.{p}.{sig}"

    h64, p64, s64 = genuine.split(".")
    tampered_claims = {**claims, "sub": "someone-else", "exp": now + 86400 * 365}
    other_type = {"bastion-session+jwt": "bastion-capability+jwt"}.get(header["typ"], "bastion-session+jwt")
    return {
        "alg none": unsigned("none", None),
        "alg none, upper case": unsigned("NONE", None),
        "HS256 keyed with the public key (PEM)": unsigned("HS256", public_pem),
        "HS256 keyed with the public key (raw)": unsigned("HS256", public_raw),
        "stripped signature": f"{h64}.{p64}.",
        "no signature part": f"{h64}.{p64}",
        "tampered payload": f"{h64}.{_b64(json.dumps(tampered_claims).encode())}.{s64}",
        "expired": resign(iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not yet valid": resign(iat=now + 3600, nbf=now + 3600, exp=now + 7200),
        "wrong aud": resign(aud="someone-else"),
        "no aud": resign(aud=None),
        "wrong iss": resign(iss="evil-issuer"),
        "wrong typ": resign({"typ": other_type}),
        "no typ": resign({"typ": None}),
        "unknown kid": resign({"kid": "no-such-kid"}, private=Ed25519PrivateKey.generate()),
        "right kid, another key": resign(private=Ed25519PrivateKey.generate()),
        "kid path traversal": resign({"kid": "../../../../etc/passwd"}),
        "garbage": "not.a.jwt",
        "empty": "",
    }


async def _login(client: Any, org: Org) -> str:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]  # type: ignore[no-any-return]


async def test_session_token_forgery_matrix(client: Any, org: Org) -> None:
    genuine = await _login(client, org)
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "sess-bot", approved=["email:send"])
    base = f"/api/v1/orgs/{org.org_id}"
    targets: list[tuple[str, str, Any]] = [
        ("GET", base, None),
        ("GET", f"{base}/manifests", None),
        ("POST", f"{base}/manifests", manifest_doc("forged-bot")),
        ("GET", f"{base}/approvals", None),
        ("POST", f"{base}/approvals/{uuid.uuid4()}/approve", {}),
        ("POST", f"{base}/api-keys", {"name": "forged", "role": "owner"}),
        ("GET", "/api/v1/orgs", None),
        ("POST", f"{base}/capability-tokens", {"uapk_id": "sess-bot", "agent_id": "a1", "capabilities": ["email:send"]}),
    ]
    for method, url, body in targets:  # the control
        r = await client.request(method, url, json=body, headers={"Authorization": f"Bearer {genuine}"})
        assert r.status_code != 401, (url, r.text)
    for name, token in forgeries(genuine, runtime).items():
        for method, url, body in targets:
            r = await client.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, (name, method, url, r.status_code, r.text)
            assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    # A session token is not a credential for the agent-facing endpoints either.
    for url in (EXECUTE, f"/api/v1/approvals/{uuid.uuid4()}"):
        r = await client.request("POST" if url == EXECUTE else "GET", url, json=action() if url == EXECUTE else None,
                                 headers={"Authorization": f"Bearer {genuine}"})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_capability_token_forgery_matrix(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "cap-bot", approved=["email:send", "crm:read"])
    key = await make_key(client, org, "agent", ["cap-bot"])
    headers = {"X-API-Key": key}
    r = await client.post("/api/v1/gateway/tokens", json={"uapk_id": "cap-bot", "agent_id": "agent-1",
                                                          "capabilities": ["email:send"]}, headers=headers)
    assert r.status_code == 201, r.text
    genuine = r.json()["token"]
    body = action(uapk_id="cap-bot")

    def accepted(r: Any) -> bool:
        return r.status_code == 200 and r.json()["decision"] == "allow"

    r = await client.post(EXECUTE, json={**body, "capability_token": genuine}, headers=headers)
    assert accepted(r), r.text  # the control
    r = await client.post("/api/v1/capability-tokens/verify", json={"token": genuine}, headers=headers)
    assert r.status_code == 200 and r.json()["valid"] is True, r.text
    for name, token in forgeries(genuine, runtime).items():
        if not token:
            continue  # an empty capability_token is no token: the manifest alone decides
        for url in ("/api/v1/gateway/evaluate", EXECUTE):
            r = await client.post(url, json={**body, "capability_token": token}, headers=headers)
            assert r.status_code in (200, 400, 401), (name, r.status_code, r.text)
            assert not accepted(r), (name, url, r.text)
            if r.status_code == 200:
                assert r.json()["decision"] == "deny", (name, r.text)
        r = await client.post("/api/v1/capability-tokens/verify", json={"token": token}, headers=headers)
        assert r.status_code in (200, 400), (name, r.status_code, r.text)
        assert r.status_code == 400 or r.json()["valid"] is False, (name, r.text)


async def test_override_token_forgery_matrix(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "ovr-bot", approved=["stripe:refund"], require_human_approval=["stripe:refund"])
    agent = {"X-API-Key": await make_key(client, org, "agent", ["ovr-bot"])}
    approver = {"X-API-Key": await make_key(client, org, "approver")}
    body = action(uapk_id="ovr-bot", tool="stripe", type="refund", amount=25.0, currency="EUR", params={"charge": "ch_1"})
    r = await client.post(EXECUTE, json=body, headers=agent)
    assert r.json()["decision"] == "escalate", r.text
    approval_id = r.json()["approval_id"]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}/approve", json={}, headers=approver)
    assert r.status_code == 200, r.text
    genuine = r.json()["override_token"]
    for name, token in forgeries(genuine, runtime).items():
        for url in ("/api/v1/gateway/evaluate", EXECUTE):
            r = await client.post(url, json={**body, "override_token": token}, headers=agent)
            assert r.status_code in (200, 400), (name, r.status_code, r.text)
            if r.status_code == 200:
                assert r.json()["decision"] != "allow", (name, url, r.text)
    # The genuine token for another action (the amount changed) is refused too.
    r = await client.post(EXECUTE, json={**body, "action": {**body["action"], "amount": 2500.0},
                                         "override_token": genuine}, headers=agent)
    assert r.status_code == 200 and r.json()["decision"] == "deny", r.text
    r = await client.post(EXECUTE, json={**body, "override_token": genuine}, headers=agent)
    assert r.json()["decision"] == "allow", r.text  # the control, used once
    r = await client.post(EXECUTE, json={**body, "override_token": genuine}, headers=agent)
    assert r.json()["decision"] == "deny", r.text


async def test_revoked_api_keys_are_refused_everywhere(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "rev-bot", approved=["email:send"])
    created = {}
    for role in ("agent", "approver", "admin"):
        r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": f"r-{role}", "role": role},
                              headers=org.headers)
        created[role] = r.json()
    calls: list[tuple[str, str, Any]] = [
        ("GET", f"/api/v1/orgs/{org.org_id}", None),
        ("GET", f"/api/v1/orgs/{org.org_id}/approvals", None),
        ("POST", EXECUTE, action(uapk_id="rev-bot")),
        ("POST", "/api/v1/gateway/evaluate", action(uapk_id="rev-bot")),
        ("GET", f"/api/v1/approvals/{uuid.uuid4()}", None),
        ("POST", "/api/v1/gateway/tokens", {"uapk_id": "rev-bot", "agent_id": "a1", "capabilities": ["email:send"]}),
    ]
    for k in created.values():
        h = {"X-API-Key": k["key"]}
        for method, url, body in calls:  # warm any cache first
            await client.request(method, url, json=body, headers=h)
        r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys/{k['id']}/revoke", headers=org.headers)
        assert r.status_code == 200, r.text
        for method, url, body in calls:
            r = await client.request(method, url, json=body, headers=h)
            assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    # Look-alikes of a live key are not it.
    live = org.owner_key
    for fake in (live[:-1], live + "x", live.upper(), " " + live[:-1], live[:-1] + chr(ord(live[-1]) ^ 1)):
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": fake})
        assert r.status_code == 401, (repr(fake), r.text)


async def test_rotated_and_retired_signing_keys(client: Any, org: Org) -> None:
    """After ``bastion keys rotate`` the old tokens still verify (grace); after ``retire``
    of the old key they are refused: sessions 401, capability tokens deny."""
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "rot-bot", approved=["email:send"])
    agent = {"X-API-Key": await make_key(client, org, "agent", ["rot-bot"])}
    old_session = await _login(client, org)
    r = await client.post("/api/v1/gateway/tokens", json={"uapk_id": "rot-bot", "agent_id": "agent-1",
                                                          "capabilities": ["email:send"]}, headers=agent)
    old_cap = r.json()["token"]
    old_kid = runtime.keys.active_kid
    new_kid = runtime.keys.rotate()
    assert new_kid != old_kid
    assert (await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {old_session}"})).status_code == 200
    runtime.keys.retire(old_kid)
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {old_session}"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    r = await client.post(EXECUTE, json={**action(uapk_id="rot-bot"), "capability_token": old_cap}, headers=agent)
    assert r.status_code in (200, 401) and (r.status_code == 401 or r.json()["decision"] == "deny"), r.text
    new_session = await _login(client, org)
    assert jwt.get_unverified_header(new_session)["kid"] == new_kid
    assert (await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {new_session}"})).status_code == 200


# --- the cross-org matrix -----------------------------------------------------------------------
BODIES: dict[tuple[str, str], Callable[[], Any]] = {
    ("POST", "manifests"): lambda: manifest_doc(f"x-{uuid.uuid4().hex[:8]}"),
    ("POST", "validate"): lambda: manifest_doc("x-bot"),
    ("POST", "approve"): lambda: {},
    ("POST", "reject"): lambda: {"reason": "x"},
    ("POST", "suspend"): lambda: {"reason": "x"},
    ("POST", "reactivate"): lambda: {},
    ("POST", "revoke"): lambda: {},
    ("POST", "deny"): lambda: {},
    ("POST", "users"): lambda: {"email": f"u{uuid.uuid4().hex[:6]}@x.com", "role": "viewer", "password": "pass-word-123"},
    ("PATCH", "{user_id}"): lambda: {"role": "viewer"},
    ("POST", "api-keys"): lambda: {"name": "x", "role": "viewer"},
    ("POST", "capability-tokens"): lambda: {"uapk_id": "iso-bot", "agent_id": "a1", "capabilities": ["email:send"]},
}


def _body_for(method: str, path: str) -> Any:
    last = path.rstrip("/").split("/")[-1]
    for key in ((method, last), (method, re.sub(r"\{[^}]+:?[^}]*\}", lambda m: m.group(0), last))):
        if key in BODIES:
            return BODIES[key]()
    return {} if method in ("POST", "PUT", "PATCH") else None


async def _resources(client: Any, org: Org, uapk: str) -> dict[str, str]:
    """One of each resource in ``org``: ids by path parameter name."""
    runtime = client.app.state.runtime
    mid = await add_manifest(runtime, org.org_id, uapk, approved=["email:send", "stripe:refund"],
                             require_human_approval=["stripe:refund"])
    agent = {"X-API-Key": await make_key(client, org, "agent", [uapk])}
    r = await client.post(EXECUTE, json=action(uapk_id=uapk, tool="stripe", type="refund"), headers=agent)
    approval_id = r.json()["approval_id"]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "iso", "role": "viewer"}, headers=org.headers)
    key_id = r.json()["id"]
    user_id = await add_member(client, org, f"m@{org.org_id[:8]}.com", "viewer", "pass-word-123")
    r = await client.post("/api/v1/gateway/tokens", json={"uapk_id": uapk, "agent_id": "a1",
                                                          "capabilities": ["email:send"]}, headers=agent)
    token_id = r.json()["token_id"]
    return {"org_id": org.org_id, "manifest_id": mid, "approval_id": approval_id, "key_id": key_id, "user_id": user_id,
            "token_id": token_id, "uapk_id": uapk}


def _fill(path: str, ids: dict[str, str], missing: str | None = None) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        if missing == name:
            return "iso-bot-missing" if name == "uapk_id" else str(uuid.uuid4())
        return ids.get(name, str(uuid.uuid4()))

    return re.sub(r"\{([^}]+)\}", sub, path)


def _known_body(method: str, path: str) -> bool:
    last = path.rstrip("/").split("/")[-1]
    return method in ("GET", "DELETE") or (method, last) in BODIES


def _expect_not_found(method: str, path: str, r: Any) -> None:
    """404 where we send a valid request; for an operation whose body we do not know, a 400
    is acceptable too (it is then compared with the missing-id answer like any other)."""
    allowed = (404,) if _known_body(method, path) else (400, 404)
    assert r.status_code in allowed, (method, path, r.status_code, r.text)


def _comparable(r: Any) -> tuple[int, Any]:
    try:
        body = r.json()
    except ValueError:
        return r.status_code, r.text
    if isinstance(body, dict):
        body.pop("request_id", None)
    return r.status_code, body


async def test_cross_org_matrix_is_indistinguishable_from_missing(client: Any, org: Org) -> None:
    other = await bootstrap_org(client.app, "globex", "owner@globex.com")
    mine = await _resources(client, org, "iso-bot")
    theirs = await _resources(client, other, "their-bot")
    doc = (await client.get("/schema/openapi.json")).json()
    checked = 0
    for path, ops in doc["paths"].items():
        if "{org_id" not in path:
            continue
        params = [p.split(":")[0] for p in re.findall(r"\{([^}]+)\}", path)]
        for method in ops:
            method = method.upper()
            if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                continue
            # 1. Their org id (with their resource ids) vs an org id that does not exist.
            foreign = await client.request(method, _fill(path, theirs), json=_body_for(method, path), headers=org.headers)
            missing = await client.request(method, _fill(path, theirs, missing="org_id"), json=_body_for(method, path),
                                           headers=org.headers)
            _expect_not_found(method, path, foreign)
            assert _comparable(foreign) == _comparable(missing), (method, path)
            checked += 1
            # 2. My org id with their resource ids vs resource ids that do not exist.
            for name in params:
                if name == "org_id" or name not in theirs:
                    continue
                ids = {**mine, name: theirs[name]}
                foreign = await client.request(method, _fill(path, ids), json=_body_for(method, path), headers=org.headers)
                missing = await client.request(method, _fill(path, mine, missing=name), json=_body_for(method, path),
                                               headers=org.headers)
                _expect_not_found(method, path, foreign)
                assert _comparable(foreign) == _comparable(missing), (method, path, name)
                checked += 1
    assert checked >= 20, checked
    # The agent-facing approval endpoint: another org's approval id reads as missing.
    agent = {"X-API-Key": await make_key(client, org, "agent", ["iso-bot"])}
    foreign = await client.get(f"/api/v1/approvals/{theirs['approval_id']}", headers=agent)
    missing = await client.get(f"/api/v1/approvals/{uuid.uuid4()}", headers=agent)
    assert foreign.status_code == 404 and _comparable(foreign) == _comparable(missing)
