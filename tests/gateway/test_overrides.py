"""Override tokens: typed, EdDSA-only, bound to one org/agent/action, strictly expiring."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from core.settings import load_settings
from core.tokens import CAPABILITY_TYP, OVERRIDE_TYP, SESSION_TYP, sign
from gateway.overrides import (
    OVERRIDE_AUDIENCE,
    OverrideOk,
    OverrideRejected,
    action_hash,
    check_override,
    issue_override,
)
from store.keystore import KeyStore

ACTION: dict[str, Any] = dict(
    org_id="org-1", uapk_id="refund-bot", agent_id="agent-7", capability="payments:refund",
    tool="stripe", type="refund", params={"charge_id": "ch_1", "amount": 1000}, amount=1000.0, currency="EUR",
    description="Refund order 17", counterparty={"name": "Alice", "jurisdiction": "DE"},
)


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.load_or_create(tmp_path / "keys.json")


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    return load_settings(env={}, data_dir=tmp_path)


def _issue(keys: KeyStore, settings: Any, **kw: Any) -> tuple[str, str, int]:
    args = {**ACTION, "approval_id": "appr-1", **kw}
    return issue_override(keys, settings, **args)


def _check(keys: KeyStore, settings: Any, token: str, **kw: Any) -> OverrideOk | OverrideRejected:
    return check_override(keys, settings, token, **{**ACTION, **kw})


def _code(result: OverrideOk | OverrideRejected) -> str:
    assert isinstance(result, OverrideRejected), result
    return result.code


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def test_issued_token_verifies_for_its_action(keys: KeyStore, settings: Any) -> None:
    before = int(time.time())
    token, jti, exp = _issue(keys, settings)
    assert before + 300 <= exp <= int(time.time()) + 300  # default lifetime: 300 s
    result = _check(keys, settings, token)
    assert result == OverrideOk(jti=jti, approval_id="appr-1", expires_at=exp)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["typ"] == OVERRIDE_TYP == "bastion-override+jwt"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == OVERRIDE_AUDIENCE and claims["iss"] == settings.issuer
    assert claims["sub"] == claims["agent_id"] == "agent-7"
    assert claims["org_id"] == "org-1" and claims["uapk_id"] == "refund-bot" and claims["approval_id"] == "appr-1"
    assert claims["action_hash"] == action_hash(**ACTION)
    assert claims["exp"] - claims["iat"] == 300


def test_action_hash_is_sha256_of_rfc8785_json() -> None:
    import hashlib

    doc = (
        '{"agent_id":"agent-7","amount":1000,"capability":"payments:refund",'
        '"counterparty":{"jurisdiction":"DE","name":"Alice"},"currency":"EUR","description":"Refund order 17",'
        '"org":"org-1","params":{"amount":1000,"charge_id":"ch_1"},"tool":"stripe","type":"refund",'
        '"uapk_id":"refund-bot"}'
    )
    assert action_hash(**ACTION) == hashlib.sha256(doc.encode()).hexdigest()
    # Absent fields are null, never left out.
    bare = dict(org_id="o", uapk_id="u", agent_id="a", capability="c:d", params={}, amount=None, currency=None)
    doc = ('{"agent_id":"a","amount":null,"capability":"c:d","counterparty":null,"currency":null,"description":null,'
           '"org":"o","params":{},"tool":null,"type":null,"uapk_id":"u"}')
    assert action_hash(**bare) == hashlib.sha256(doc.encode()).hexdigest()


def test_lifetime_and_setting(keys: KeyStore, tmp_path: Path) -> None:
    s = load_settings(env={}, data_dir=tmp_path, override_token_ttl_seconds=42)
    token, _, exp = _issue(keys, s)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 42 and exp == claims["exp"]
    token, _, exp = _issue(keys, s, ttl_seconds=600)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600


def test_numbers_compare_canonically(keys: KeyStore, settings: Any) -> None:
    token, _, _ = _issue(keys, settings)
    # 1000 and 1000.0 are the same JSON number: RFC 8785 writes both as 1000.
    assert isinstance(_check(keys, settings, token, amount=1000, params={"amount": 1000.0, "charge_id": "ch_1"}), OverrideOk)


@pytest.mark.parametrize(
    "change",
    [
        {"agent_id": "agent-8"},
        {"uapk_id": "other-bot"},
        {"org_id": "org-2"},
        {"capability": "payments:charge"},
        {"params": {"charge_id": "ch_2", "amount": 1000}},
        {"params": {"charge_id": "ch_1", "amount": 1000, "extra": True}},
        {"amount": 1001.0},
        {"amount": None},
        {"currency": "USD"},
        {"tool": "wire"},
        {"type": "wire_all_funds"},
        {"description": "Refund order 18"},
        {"description": None},
        {"counterparty": {"name": "Mallory", "jurisdiction": "RU"}},
        {"counterparty": {"name": "Alice", "jurisdiction": "RU"}},
        {"counterparty": {"name": "Alice", "jurisdiction": "DE", "email": "a@evil.example"}},
        {"counterparty": None},
    ],
)
def test_other_action_or_agent_is_a_mismatch(keys: KeyStore, settings: Any, change: dict[str, Any]) -> None:
    token, _, _ = _issue(keys, settings)
    assert _code(_check(keys, settings, token, **change)) == "override_token_action_mismatch"


def test_uncanonicalisable_params_are_a_mismatch_not_a_crash(keys: KeyStore, settings: Any) -> None:
    token, _, _ = _issue(keys, settings)
    assert _code(_check(keys, settings, token, params={"n": 2**60})) == "override_token_action_mismatch"
    assert _code(_check(keys, settings, token, amount=float("nan"))) == "override_token_action_mismatch"


def test_expired(keys: KeyStore, settings: Any) -> None:
    token, _, _ = _issue(keys, settings, ttl_seconds=60, now=time.time() - 3600)
    assert _code(_check(keys, settings, token)) == "override_token_expired"


def test_expiry_has_no_grace_period(keys: KeyStore, settings: Any) -> None:
    # Expired 5 s ago: inside the JWT library's clock-skew leeway, still refused.
    token, _, exp = _issue(keys, settings, ttl_seconds=60, now=time.time() - 65)
    assert exp < time.time()
    assert _code(_check(keys, settings, token)) == "override_token_expired"
    # And an injected clock decides, too.
    token, _, exp = _issue(keys, settings, ttl_seconds=60)
    assert isinstance(_check(keys, settings, token), OverrideOk)
    assert _code(_check(keys, settings, token, now=lambda: exp + 1)) == "override_token_expired"


def _claims(keys: KeyStore, settings: Any) -> dict[str, Any]:
    token, _, _ = _issue(keys, settings)
    claims = jwt.decode(token, options={"verify_signature": False})
    for k in ("iat", "nbf", "exp"):
        claims.pop(k)
    return claims


def test_session_token_is_not_an_override(keys: KeyStore, settings: Any) -> None:
    claims = _claims(keys, settings)
    token = sign(keys, SESSION_TYP, claims, 300)
    assert _code(_check(keys, settings, token)) == "override_token_invalid"
    # A real session token as issued by the login endpoint, too.
    session = sign(keys, SESSION_TYP, {"iss": settings.issuer, "aud": "bastion-api", "sub": "u1", "email": "a@b.co"}, 300)
    assert _code(_check(keys, settings, session)) == "override_token_invalid"


def test_capability_typ_token_is_not_an_override(keys: KeyStore, settings: Any) -> None:
    token = sign(keys, CAPABILITY_TYP, _claims(keys, settings), 300)
    assert _code(_check(keys, settings, token)) == "override_token_invalid"


def test_wrong_audience_or_issuer(keys: KeyStore, settings: Any) -> None:
    claims = _claims(keys, settings)
    token = sign(keys, OVERRIDE_TYP, {**claims, "aud": "bastion-api"}, 300)
    assert _code(_check(keys, settings, token)) == "override_token_invalid"
    token = sign(keys, OVERRIDE_TYP, {**claims, "iss": "someone-else"}, 300)
    assert _code(_check(keys, settings, token)) == "override_token_invalid"


def test_missing_binding_claim(keys: KeyStore, settings: Any) -> None:
    claims = _claims(keys, settings)
    for name in ("action_hash", "approval_id", "org_id", "uapk_id", "agent_id"):
        token = sign(keys, OVERRIDE_TYP, {k: v for k, v in claims.items() if k != name}, 300)
        assert _code(_check(keys, settings, token)) == "override_token_invalid", name


def test_alg_none(keys: KeyStore, settings: Any) -> None:
    token, _, _ = _issue(keys, settings)
    payload = token.split(".")[1]
    forged = _b64({"alg": "none", "typ": OVERRIDE_TYP, "kid": keys.active_kid}) + "." + payload + "."
    assert _code(_check(keys, settings, forged)) == "override_token_invalid"


def test_hs256_signed_with_the_public_key(keys: KeyStore, settings: Any) -> None:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    token, _, _ = _issue(keys, settings)
    payload = token.split(".")[1]
    public_pem = keys.signing_key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw_pub = keys.signing_key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for secret in (public_pem, raw_pub):
        head = _b64({"alg": "HS256", "typ": OVERRIDE_TYP, "kid": keys.active_kid})
        sig = hmac.new(secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{head}.{payload}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
        assert _code(_check(keys, settings, forged)) == "override_token_invalid"


def test_tampered(keys: KeyStore, settings: Any) -> None:
    token, _, _ = _issue(keys, settings)
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    # Re-point the token at another action (what an attacker would want) keeping the signature.
    claims["action_hash"] = action_hash(**{**ACTION, "params": {"charge_id": "ch_9", "amount": 99999}})
    forged = f"{head}.{_b64(claims)}.{sig}"
    result = _check(keys, settings, forged, params={"charge_id": "ch_9", "amount": 99999})
    assert _code(result) == "override_token_invalid"
    # A flipped signature byte.
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert _code(_check(keys, settings, flipped)) == "override_token_invalid"


def test_signed_by_an_unknown_key(keys: KeyStore, settings: Any, tmp_path: Path) -> None:
    stranger = KeyStore.load_or_create(tmp_path / "other.json")
    token, _, _ = _issue(stranger, settings)
    assert _code(_check(keys, settings, token)) == "override_token_invalid"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 10000, "eyJhbGciOiJFZERTQSJ9.e30."])
def test_garbage(keys: KeyStore, settings: Any, garbage: str) -> None:
    assert _code(_check(keys, settings, garbage)) == "override_token_invalid"
