"""Login and session tokens: EdDSA JWTs with typ, audience and expiry, only as Bearer."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from tests.conftest import Org, assert_error


async def _login(client: Any, org: Org) -> dict[str, Any]:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(client: Any, org: Org, **extra: Any) -> dict[str, Any]:
    from httpkit.auth import SESSION_AUDIENCE

    now = int(time.time())
    return {
        "iss": client.app.state.settings.issuer, "aud": SESSION_AUDIENCE, "sub": org.user_id, "email": org.email,
        "iat": now, "nbf": now, "exp": now + 600, "jti": "j" * 16, **extra,
    }


async def test_login_returns_a_bearer_session_token(client: Any, org: Org) -> None:
    body = await _login(client, org)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == client.app.state.settings.session_ttl_seconds
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "EdDSA" and header["typ"] == "bastion-session+jwt" and header["kid"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "bastion-api" and claims["sub"] == org.user_id
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 200 and r.json()["role"] == "owner"


async def test_login_with_wrong_password_or_unknown_email_is_401_alike(client: Any, org: Org) -> None:
    r1 = await client.post("/api/v1/auth/login", json={"email": org.email, "password": "wrong-password"})
    r2 = await client.post("/api/v1/auth/login", json={"email": "nobody@acme.com", "password": "wrong-password"})
    b1, b2 = assert_error(r1, 401, "AUTHENTICATION_REQUIRED"), assert_error(r2, 401, "AUTHENTICATION_REQUIRED")
    assert {**b1, "request_id": ""} == {**b2, "request_id": ""}


async def test_login_email_is_case_insensitive(client: Any, org: Org) -> None:
    r = await client.post("/api/v1/auth/login", json={"email": org.email.upper(), "password": org.password})
    assert r.status_code == 200


async def test_session_token_as_api_key_is_401(client: Any, org: Org) -> None:
    token = (await _login(client, org))["access_token"]
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"X-API-Key": token})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_api_key_as_bearer_is_401(client: Any, org: Org) -> None:
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {org.owner_key}"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_other_schemes_are_401(client: Any, org: Org) -> None:
    token = (await _login(client, org))["access_token"]
    for value in (f"Basic {token}", token, "Bearer", "Bearer  "):
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": value})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_expired_session_token_is_401(client: Any, org: Org) -> None:
    from core.tokens import SESSION_TYP, sign
    from httpkit.auth import SESSION_AUDIENCE

    rt = client.app.state.runtime
    token = sign(
        rt.keys, SESSION_TYP, {"iss": rt.settings.issuer, "aud": SESSION_AUDIENCE, "sub": org.user_id, "email": org.email},
        60, now=time.time() - 3600,
    )
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_wrong_typ_audience_or_issuer_is_401(client: Any, org: Org) -> None:
    from core.tokens import OVERRIDE_TYP, SESSION_TYP

    rt = client.app.state.runtime
    key = rt.keys.signing_key
    cases = [
        ({"typ": OVERRIDE_TYP}, _claims(client, org)),
        ({"typ": "JWT"}, _claims(client, org)),
        ({}, _claims(client, org)),  # no typ at all
        ({"typ": SESSION_TYP}, _claims(client, org, aud="bastion-gateway")),
        ({"typ": SESSION_TYP}, _claims(client, org, iss="someone-else")),
        ({"typ": SESSION_TYP}, {k: v for k, v in _claims(client, org).items() if k != "exp"}),
    ]
    for extra_headers, claims in cases:
        headers = {"kid": key.kid, **extra_headers}
        token = jwt.encode(claims, key.private, algorithm="EdDSA", headers=headers)
        if "typ" not in extra_headers:
            # PyJWT adds typ=JWT by default; strip it to test a token without typ.
            h, p, s = token.split(".")
            hdr = json.loads(base64.urlsafe_b64decode(h + "=="))
            hdr.pop("typ", None)
            signing_input = _b64(json.dumps(hdr).encode()) + "." + p
            sig = key.private.sign(signing_input.encode())
            token = signing_input + "." + _b64(sig)
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    # Control: the same construction with the right values is accepted.
    token = jwt.encode(_claims(client, org), key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": SESSION_TYP})
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


async def test_alg_none_forgery_is_401(client: Any, org: Org) -> None:
    from core.tokens import SESSION_TYP

    kid = client.app.state.runtime.keys.signing_key.kid
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "typ": SESSION_TYP, "kid": kid}
        token = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(_claims(client, org)).encode()) + "."
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_hs256_signed_with_the_public_key_is_401(client: Any, org: Org) -> None:
    from core.tokens import SESSION_TYP

    key = client.app.state.runtime.keys.signing_key
    publics = [
        key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    ]
    for secret in publics:
        header = {"alg": "HS256", "typ": SESSION_TYP, "kid": key.kid}
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(_claims(client, org)).encode())
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + _b64(sig)
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_token_signed_by_a_foreign_key_is_401(client: Any, org: Org) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.tokens import SESSION_TYP

    kid = client.app.state.runtime.keys.signing_key.kid
    token = jwt.encode(_claims(client, org), Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid, "typ": SESSION_TYP})
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    for bad_kid in ("../../etc/passwd", "x" * 500, "unknown"):
        token = jwt.encode(_claims(client, org), client.app.state.runtime.keys.signing_key.private, algorithm="EdDSA",
                           headers={"kid": bad_kid, "typ": SESSION_TYP})
        r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={"Authorization": f"Bearer {token}"})
        assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_tampered_token_is_401(client: Any, org: Org, other_org: Org) -> None:
    token = (await _login(client, org))["access_token"]
    h, p, s = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["sub"] = other_org.user_id
    forged = f"{h}.{_b64(json.dumps(claims).encode())}.{s}"
    r = await client.get(f"/api/v1/orgs/{other_org.org_id}", headers={"Authorization": f"Bearer {forged}"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_session_sees_role_changes_and_removal_at_once(client: Any, org: Org) -> None:
    from tests.members import add_member

    uid = await add_member(client, org, "ann@acme.com", "admin", "ann-pass-1234")
    token = (await client.post("/api/v1/auth/login", json={"email": "ann@acme.com", "password": "ann-pass-1234"})).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "k", "role": "viewer"}, headers=auth)
    assert r.status_code == 201
    await client.patch(f"/api/v1/orgs/{org.org_id}/users/{uid}", json={"role": "viewer"}, headers=org.headers)
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "k", "role": "viewer"}, headers=auth)
    assert_error(r, 403, "PERMISSION_DENIED")
    await client.delete(f"/api/v1/orgs/{org.org_id}/users/{uid}", headers=org.headers)
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers=auth)
    assert_error(r, 404, "NOT_FOUND")


async def test_passwords_are_stored_as_scrypt_hashes(client: Any, org: Org) -> None:
    from store import accounts
    from store.passwords import verify_password

    async with client.app.state.runtime.sessions() as session:
        user = await accounts.get_user_by_email(session, org.email)
    assert user is not None and org.password not in user.password_hash
    assert user.password_hash.startswith("scrypt$")
    assert verify_password(org.password, user.password_hash)
    assert not verify_password(org.password + "x", user.password_hash)
