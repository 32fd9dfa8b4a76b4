"""Capability tokens: issuance narrows, format, verification, revocation, rotation, JWKS."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from core.tokens import CAPABILITY_TYP, sign
from gateway.captokens import CAPABILITY_AUDIENCE, TokenProblem
from tests.conftest import Org, assert_error, make_key, serve_app
from tests.timing import eventually
from tests.tokens.helpers import active_manifest, set_status


async def _issue(client: Any, key: str, caps: list[str], uapk: str = "support-bot", agent: str = "agent-1", **extra: Any) -> Any:
    body = {"uapk_id": uapk, "agent_id": agent, "capabilities": caps, **extra}
    return await client.post("/api/v1/gateway/tokens", json=body, headers={"X-API-Key": key})


async def _verify(client: Any, key: str, token: str, capability: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"token": token}
    if capability:
        body["capability"] = capability
    r = await client.post("/api/v1/capability-tokens/verify", json=body, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_issue_format_and_claims(client: Any, org: Org) -> None:
    m = await active_manifest(client.app, org.org_id)
    key = await make_key(client, org, "agent")
    r = await _issue(client, key, ["crm:read", "email:send"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"token", "token_id", "capabilities", "expires_at"}
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "EdDSA" and header["typ"] == CAPABILITY_TYP and header["kid"]
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    for name in ("iss", "aud", "sub", "org_id", "uapk_id", "manifest_hash", "capabilities", "constraints", "iat", "nbf", "exp", "jti"):
        assert name in claims, name
    assert claims["sub"] == "agent-1" and claims["org_id"] == org.org_id and claims["uapk_id"] == "support-bot"
    assert claims["manifest_hash"] == m.manifest_hash and claims["jti"] == body["token_id"]
    assert claims["exp"] - claims["iat"] == 900  # default lifetime 15 minutes


async def test_issue_only_narrows(client: Any, org: Org) -> None:
    await active_manifest(client.app, org.org_id, approved=["crm:read", "email:*"])
    key = await make_key(client, org, "agent")
    assert (await _issue(client, key, ["email:send", "email:*", "crm:read"])).status_code == 201
    r = await _issue(client, key, ["crm:read", "crm:delete", "crm:*"])
    body = assert_error(r, 403, "PERMISSION_DENIED")
    assert "crm:delete" in body["message"] and "crm:*" in body["message"]
    assert {d["field"] for d in body["details"]} == {"capabilities.1", "capabilities.2"}


async def test_issue_refused_without_active_manifest(client: Any, org: Org) -> None:
    m = await active_manifest(client.app, org.org_id, status="pending")
    key = await make_key(client, org, "agent")
    assert_error(await _issue(client, key, ["crm:read"]), 403, "PERMISSION_DENIED")
    await set_status(client.app, m, "active")
    assert (await _issue(client, key, ["crm:read"])).status_code == 201


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"expires_in_seconds": 5}, "expires_in_seconds"),
        ({"expires_in_seconds": 10**9}, "expires_in_seconds"),
        ({"constraints": {"evil": 1}}, "constraints.evil"),
        ({"constraints": {"max_amount": -1}}, "constraints.max_amount"),
    ],
)
async def test_issue_validation(client: Any, org: Org, extra: dict[str, Any], field: str) -> None:
    await active_manifest(client.app, org.org_id)
    key = await make_key(client, org, "agent")
    body = assert_error(await _issue(client, key, ["crm:read"], **extra), 400, "VALIDATION_ERROR")
    assert field in {d["field"] for d in body["details"]}


async def test_bad_capability_grammar(client: Any, org: Org) -> None:
    await active_manifest(client.app, org.org_id)
    key = await make_key(client, org, "agent")
    for bad in ["crm", "CRM:read", "crm:re*d", "crm:read\u200b", "crm:read:x"]:
        body = assert_error(await _issue(client, key, [bad]), 400, "VALIDATION_ERROR")
        assert body["details"][0]["field"] == "capabilities.0"


async def test_restricted_agent_key(client: Any, org: Org) -> None:
    await active_manifest(client.app, org.org_id, uapk_id="support-bot")
    await active_manifest(client.app, org.org_id, uapk_id="billing-bot")
    key = await make_key(client, org, "agent", uapk_ids=["billing-bot"])
    assert_error(await _issue(client, key, ["crm:read"], uapk="support-bot"), 403, "PERMISSION_DENIED")
    viewer = await make_key(client, org, "viewer")
    assert_error(await _issue(client, viewer, ["crm:read"]), 403, "PERMISSION_DENIED")


async def test_verify_endpoint_and_narrowing(client: Any, org: Org) -> None:
    await active_manifest(client.app, org.org_id, approved=["crm:read", "email:*"])
    key = await make_key(client, org, "agent")
    token = (await _issue(client, key, ["email:send"])).json()["token"]
    v = await _verify(client, key, token, "email:send")
    assert v["valid"] is True and v["capability_allowed"] is True and v["claims"]["sub"] == "agent-1"
    assert (await _verify(client, key, token, "email:read"))["capability_allowed"] is False  # manifest grants, token does not
    assert (await _verify(client, key, token, "crm:read"))["capability_allowed"] is False


async def test_verify_other_org_is_invalid(client: Any, org: Org, other_org: Org) -> None:
    await active_manifest(client.app, org.org_id)
    token = (await _issue(client, await make_key(client, org, "agent"), ["crm:read"])).json()["token"]
    v = await _verify(client, other_org.owner_key, token)
    assert v == {"valid": False, "reason": "capability_token_invalid", "message": v["message"]}


async def test_suspend_or_revoke_manifest_kills_tokens(client: Any, org: Org) -> None:
    m = await active_manifest(client.app, org.org_id)
    key = await make_key(client, org, "agent")
    token = (await _issue(client, key, ["crm:read"])).json()["token"]
    assert (await _verify(client, key, token))["valid"] is True
    await set_status(client.app, m, "suspended")
    assert (await _verify(client, key, token))["valid"] is False
    await set_status(client.app, m, "active")
    assert (await _verify(client, key, token))["valid"] is True
    await set_status(client.app, m, "revoked")
    assert (await _verify(client, key, token))["reason"] == "capability_token_revoked"


async def test_admin_issue_list_revoke(client: Any, org: Org, other_org: Org) -> None:
    await active_manifest(client.app, org.org_id)
    base = f"/api/v1/orgs/{org.org_id}/capability-tokens"
    r = await client.post(base, json={"uapk_id": "support-bot", "agent_id": "tool-7", "capabilities": ["crm:read"]}, headers=org.headers)
    assert r.status_code == 201, r.text
    issued = r.json()
    listing = (await client.get(base, headers=org.headers)).json()
    assert listing["total"] == 1
    assert "token" not in listing["items"][0] and issued["token"] not in json.dumps(listing)
    assert listing["items"][0]["issued_via"] == "admin" and listing["items"][0]["revoked_at"] is None
    # Another org's token id answers 404 like a missing one.
    other = f"/api/v1/orgs/{other_org.org_id}/capability-tokens/{issued['token_id']}/revoke"
    assert_error(await client.post(other, headers=other_org.headers), 404, "NOT_FOUND")
    assert_error(await client.post(f"{base}/{issued['token_id']}/revoke", headers=other_org.headers), 404, "NOT_FOUND")
    r = await client.post(f"{base}/{issued['token_id']}/revoke", headers=org.headers)
    assert r.status_code == 200 and r.json()["revoked_at"]
    v = await _verify(client, org.owner_key, issued["token"])
    assert v["valid"] is False and v["reason"] == "capability_token_revoked"
    viewer = await make_key(client, org, "viewer")
    assert (await client.get(base, headers={"X-API-Key": viewer})).status_code == 200
    assert_error(await client.post(base, json={"uapk_id": "support-bot", "agent_id": "x", "capabilities": ["crm:read"]},
                                   headers={"X-API-Key": viewer}), 403, "PERMISSION_DENIED")


# --- forgeries and the 3x3 type matrix ---------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(org_id: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {
        "iss": "bastion", "aud": CAPABILITY_AUDIENCE, "sub": "agent-1", "org_id": org_id, "uapk_id": "support-bot",
        "manifest_hash": "sha256:x", "capabilities": ["crm:read"], "constraints": {}, "iat": now, "nbf": now,
        "exp": now + 600, "jti": "j" * 32,
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def _forge(runtime: Any, org_id: str, case: str) -> str:
    keys = runtime.keys
    kid = keys.active_kid
    private = keys.signing_key.private
    public_pem = keys.signing_key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    good = jwt.encode(_claims(org_id), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": kid})
    h, p, s = good.split(".")
    if case == "alg_none":
        head = _b64(json.dumps({"alg": "none", "typ": CAPABILITY_TYP, "kid": kid}).encode())
        return f"{head}.{p}."
    if case == "hs256_public_key":
        import hashlib
        import hmac

        head = _b64(json.dumps({"alg": "HS256", "typ": CAPABILITY_TYP, "kid": kid}).encode())
        sig = hmac.new(public_pem, f"{head}.{p}".encode(), hashlib.sha256).digest()
        return f"{head}.{p}.{_b64(sig)}"
    if case == "stripped_signature":
        return f"{h}.{p}."
    if case == "tampered":
        claims = _claims(org_id, capabilities=["*:*"])
        return f"{h}.{_b64(json.dumps(claims).encode())}.{s}"
    if case == "no_exp":
        return jwt.encode(_claims(org_id, exp=None), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": kid})
    if case == "expired":
        return jwt.encode(_claims(org_id, exp=int(time.time()) - 120), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": kid})
    if case == "not_yet_valid":
        return jwt.encode(_claims(org_id, nbf=int(time.time()) + 300), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": kid})
    if case == "wrong_aud":
        return jwt.encode(_claims(org_id, aud="someone-else"), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": kid})
    if case == "wrong_iss":
        return jwt.encode(_claims(org_id, iss="evil"), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": kid})
    if case.startswith("kid:"):
        return jwt.encode(_claims(org_id), private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": case[4:]})
    raise AssertionError(case)


FORGERIES = {
    "alg_none": "capability_token_invalid",
    "hs256_public_key": "capability_token_invalid",
    "stripped_signature": "capability_token_invalid",
    "tampered": "capability_token_invalid",
    "no_exp": "capability_token_invalid",
    "expired": "capability_token_expired",
    "not_yet_valid": "capability_token_invalid",
    "wrong_aud": "capability_token_invalid",
    "wrong_iss": "capability_token_invalid",
    "kid:unknown-kid": "capability_token_invalid",
    "kid:../../etc/passwd": "capability_token_invalid",
    "kid:' OR 1=1 --": "capability_token_invalid",
    "kid:http://evil.example/jwks.json": "capability_token_invalid",
    "kid:" + "A" * 5000: "capability_token_invalid",
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
async def test_forgeries_are_rejected(client: Any, org: Org, case: str) -> None:
    verifier = client.app.state.tokens.verifier
    result = verifier.verify(_forge(client.app.state.runtime, org.org_id, case))
    assert isinstance(result, TokenProblem) and result.code == FORGERIES[case], result
    # And through the HTTP verify endpoint, never a 5xx.
    v = await _verify(client, org.owner_key, _forge(client.app.state.runtime, org.org_id, case))
    assert v["valid"] is False and v["reason"] == FORGERIES[case]


async def test_control_token_verifies(client: Any, org: Org) -> None:
    # The forging helper's untouched token is accepted: the forgery tests test what they claim.
    verifier = client.app.state.tokens.verifier
    keys = client.app.state.runtime.keys
    good = jwt.encode(_claims(org.org_id), keys.signing_key.private, algorithm="EdDSA", headers={"typ": CAPABILITY_TYP, "kid": keys.active_kid})
    assert not isinstance(verifier.verify(good), TokenProblem)


async def test_type_matrix_only_diagonal_accepted(client: Any, org: Org) -> None:
    """Capability, override and session tokens, each presented where each kind is expected."""
    from core.errors import AuthenticationRequired
    from gateway.overrides import OverrideOk, check_override, issue_override

    runtime = client.app.state.runtime
    settings = runtime.settings
    action = dict(org_id=org.org_id, uapk_id="support-bot", agent_id="agent-1", capability="crm:read", params={}, amount=None, currency=None)
    cap = sign(runtime.keys, CAPABILITY_TYP, {k: v for k, v in _claims(org.org_id).items() if k not in {"iat", "nbf", "exp", "jti"}}, 600)
    override, _, _ = issue_override(runtime.keys, settings, approval_id="a" * 36, ttl_seconds=300, **action)
    login = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    session = login.json()["access_token"]
    tokens = {"capability": cap, "override": override, "session": session}

    def accepts(kind: str, token: str) -> bool:
        if kind == "capability":
            return not isinstance(client.app.state.tokens.verifier.verify(token), TokenProblem)
        if kind == "override":
            return isinstance(check_override(runtime.keys, settings, token, **action), OverrideOk)
        try:
            client.app.state.authenticator.session(token)
            return True
        except AuthenticationRequired:
            return False

    matrix = {(expected, given): accepts(expected, tok) for expected in tokens for given, tok in tokens.items()}
    assert matrix == {(e, g): e == g for e in tokens for g in tokens}, matrix


# --- keys: rotation, retirement, JWKS, offline verification ------------------------------
async def test_rotation_keeps_old_tokens_and_jwks_verifies_offline(client: Any, org: Org) -> None:
    await active_manifest(client.app, org.org_id)
    key = await make_key(client, org, "agent")
    old = (await _issue(client, key, ["crm:read"])).json()["token"]
    runtime = client.app.state.runtime
    old_kid = runtime.keys.active_kid
    new_kid = runtime.keys.rotate()
    assert new_kid != old_kid
    new = (await _issue(client, key, ["crm:read"])).json()["token"]
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    # Offline verification by a downstream tool, with nothing but PyJWT and the JWKS.
    for token in (old, new):
        kid = jwt.get_unverified_header(token)["kid"]
        jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
        claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], audience=CAPABILITY_AUDIENCE, issuer="bastion")
        assert claims["capabilities"] == ["crm:read"]
        assert (await _verify(client, key, token))["valid"] is True
    runtime.keys.retire(old_kid)
    # Even though the verifier has the old token cached, a retired key's tokens stop verifying.
    assert (await _verify(client, key, old))["reason"] == "capability_token_invalid"
    assert (await _verify(client, key, new))["valid"] is True


async def test_revocation_reaches_another_process_by_pubsub(pg_url: str, redis_url: str, tmp_path: Any) -> None:
    """Two app instances, each with its own Runtime and Redis pub/sub connection, sharing
    PostgreSQL and Redis as two server processes do."""
    from bastion.app import create_app
    from core.settings import load_settings
    from tests.conftest import bootstrap_org

    settings = load_settings(env={}, database_url=pg_url, redis_url=redis_url, data_dir=tmp_path / "data",
                             redis_timeout_ms=2000)  # as tests/conftest.py: in-process apps on a busy CI machine
    async with serve_app(create_app(settings)) as client, serve_app(create_app(settings)) as second:
        org = await bootstrap_org(client.app)
        await active_manifest(client.app, org.org_id)
        key = await make_key(client, org, "agent")
        token = (await _issue(client, key, ["crm:read"])).json()["token"]
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        verifier_b = second.app.state.tokens.verifier
        assert not isinstance(verifier_b.verify(token), TokenProblem)
        # Only pub/sub can tell the second app: its 2 s catch-up from the database is stopped
        # (tests/faults/test_replica_catch_up.py covers that path with a message really lost).
        await second.app.state.tokens.stop()
        r = await client.post(f"/api/v1/orgs/{org.org_id}/capability-tokens/{jti}/revoke", headers=org.headers)
        assert r.status_code == 200

        async def refused() -> bool:
            result = verifier_b.verify(token)
            if isinstance(result, TokenProblem):
                assert result.code == "capability_token_revoked", result
                return True
            return False

        await eventually(refused, 1.0)  # the 1 s figure: make soak
