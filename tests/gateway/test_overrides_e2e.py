"""Override tokens end to end through /api/v1/gateway/{evaluate,execute}, on both backends:
escalate -> approval -> approve -> execute with the token, single use under 1,000 concurrent
retries, evaluate and quota-denied executes not consuming it, mismatches."""
from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from core.tokens import CAPABILITY_TYP, SESSION_TYP, sign
from gateway.overrides import issue_override
from tests.conftest import Org, make_key

UAPK_ID = "refund-bot"
AGENT_ID = "agent-1"
MANIFEST: dict[str, Any] = {
    "version": "1.0",
    "agent": {"id": UAPK_ID, "name": "Refund Bot", "version": "1.0.0"},
    "capabilities": {"requested": ["crm:read", "stripe:refund"]},
    "constraints": {"max_actions_per_hour": 100, "max_actions_per_day": 1000, "require_human_approval": ["stripe:refund"]},
}
REFUND: dict[str, Any] = {"type": "refund", "tool": "stripe", "params": {"charge_id": "ch_1"}, "amount": 1500.0, "currency": "EUR"}


async def _manifest(client: Any, org: Org, *, version: str = "1.0.0", per_hour: int = 100) -> None:
    doc = copy.deepcopy(MANIFEST)
    doc["agent"]["version"] = version
    doc["constraints"]["max_actions_per_hour"] = per_hour
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    r = await client.post(base, json=doc, headers=org.headers)
    assert r.status_code == 201, r.text
    r = await client.post(f"{base}/{r.json()['manifest_id']}/approve", json={}, headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text


def _req(action: dict[str, Any] | None = None, agent_id: str = AGENT_ID, token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"uapk_id": UAPK_ID, "agent_id": agent_id, "action": action or REFUND}
    if token is not None:
        body["override_token"] = token
    return body


async def _execute(client: Any, agent: dict[str, str], **kw: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/gateway/execute", json=_req(**kw), headers=agent)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _evaluate(client: Any, agent: dict[str, str], **kw: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/gateway/evaluate", json=_req(**kw), headers=agent)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _codes(body: dict[str, Any]) -> list[str]:
    return [r["code"] for r in body["reasons"]]


async def _approved_token(client: Any, org: Org, agent: dict[str, str], **kw: Any) -> tuple[str, str]:
    """Escalate an execute, approve the approval; returns (approval_id, override_token)."""
    body = await _execute(client, agent, **kw)
    assert body["decision"] == "escalate", body
    approval_id = body["approval_id"]
    assert approval_id
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    return approval_id, r.json()["override_token"]


async def test_escalated_execute_creates_the_approval(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    ev = await _evaluate(client, agent)
    assert ev["decision"] == "escalate" and ev["approval_id"] is None  # a dry run creates nothing
    assert (await client.get(f"/api/v1/orgs/{org.org_id}/approvals", headers=org.headers)).json()["total"] == 0
    body = await _execute(client, agent)
    assert body["decision"] == "escalate" and _codes(body) == ["requires_human_approval"]
    r = await client.get(f"/api/v1/approvals/{body['approval_id']}", headers=agent)
    assert r.status_code == 200, r.text
    approval = r.json()
    assert approval["status"] == "PENDING" and approval["uapk_id"] == UAPK_ID and approval["agent_id"] == AGENT_ID
    assert approval["capability"] == "stripe:refund" and approval["interaction_id"] == body["interaction_id"]
    assert approval["action"]["params"] == REFUND["params"] and approval["action"]["amount"] == 1500.0
    assert [r["code"] for r in approval["reasons"]] == ["requires_human_approval"]


async def test_single_use_under_1000_concurrent_retries(client: Any, org: Org) -> None:
    await _manifest(client, org, per_hour=5000)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    approval_id, token = await _approved_token(client, org, agent)

    unavailable = 0

    async def attempt() -> dict[str, Any]:
        # Like the SDK, retry a 503 (fail-closed "no action was allowed, retry shortly"):
        # under this burst an overloaded gateway may shed load, but never allow twice.
        nonlocal unavailable
        for _ in range(100):
            r = await client.post("/api/v1/gateway/execute", json=_req(token=token), headers=agent)
            if r.status_code != 503:
                assert r.status_code == 200, r.text
                return r.json()  # type: ignore[no-any-return]
            unavailable += 1
            await asyncio.sleep(0.05)
        raise AssertionError("gateway unavailable for 100 retries")

    results = await asyncio.gather(*(attempt() for _ in range(1000)))
    print(f"503 retries: {unavailable}")
    allowed = [b for b in results if b["decision"] == "allow"]
    assert len(allowed) == 1, [b["reasons"] for b in results[:3]]
    assert _codes(allowed[0]) == ["override_token_accepted"]
    denied = [b for b in results if b["decision"] == "deny"]
    assert len(denied) == 999
    assert all(_codes(b) == ["override_token_already_used"] for b in denied)
    # And afterwards, sequentially, still used.
    assert _codes(await _execute(client, agent, token=token)) == ["override_token_already_used"]
    # The use is recorded on the approval (off the response path).
    await client.app.state.gateway.drain()
    r = await client.get(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}", headers=org.headers)
    assert r.json()["override_used_at"] is not None
    polled = (await client.get(f"/api/v1/approvals/{approval_id}", headers=agent)).json()
    assert polled["status"] == "APPROVED" and polled["override_token"] is None


async def test_evaluate_does_not_consume(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    _, token = await _approved_token(client, org, agent)
    for _ in range(3):
        ev = await _evaluate(client, agent, token=token)
        assert ev["decision"] == "allow" and _codes(ev) == ["override_token_accepted"]
    body = await _execute(client, agent, token=token)
    assert body["decision"] == "allow" and _codes(body) == ["override_token_accepted"]
    # Once spent, evaluate reports it too (without changing anything).
    assert _codes(await _evaluate(client, agent, token=token)) == ["override_token_already_used"]


async def test_quota_denied_execute_does_not_consume(client: Any, org: Org) -> None:
    await _manifest(client, org, per_hour=1)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    _, token = await _approved_token(client, org, agent)
    # Spend the hour's single action on something else.
    read = {"type": "read", "tool": "crm", "params": {}}
    assert (await _execute(client, agent, action=read))["decision"] == "allow"
    for _ in range(3):
        body = await _execute(client, agent, token=token)
        assert body["decision"] == "deny", body
        assert "override_token_already_used" not in _codes(body)
        assert any("budget" in c or "quota" in c for c in _codes(body)), body
    # Raise the quota (a new manifest version); the token was not spent by the denials.
    await _manifest(client, org, version="1.1.0", per_hour=100)
    for _ in range(200):  # the gateway learns of the new version through the change bus
        ev = await _evaluate(client, agent, token=token)
        if ev["decision"] == "allow":
            break
        await asyncio.sleep(0.05)
    body = await _execute(client, agent, token=token)
    assert body["decision"] == "allow" and _codes(body) == ["override_token_accepted"], body
    assert _codes(await _execute(client, agent, token=token)) == ["override_token_already_used"]


async def test_token_for_another_action_or_agent(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    _, token = await _approved_token(client, org, agent)
    other_params = {**REFUND, "params": {"charge_id": "ch_2"}}
    other_amount = {**REFUND, "amount": 99999.0}
    for kw in ({"action": other_params}, {"action": other_amount}, {"agent_id": "agent-2"}):
        body = await _execute(client, agent, token=token, **kw)
        assert body["decision"] == "deny" and _codes(body) == ["override_token_action_mismatch"], (kw, body)
    # None of that spent it.
    assert (await _execute(client, agent, token=token))["decision"] == "allow"


async def test_token_of_another_org_is_a_mismatch(client: Any, org: Org, other_org: Org) -> None:
    await _manifest(client, org)
    await _manifest(client, other_org)
    mine = {"X-API-Key": await make_key(client, org, "agent")}
    theirs = {"X-API-Key": await make_key(client, other_org, "agent")}
    _, token = await _approved_token(client, other_org, theirs)
    body = await _execute(client, mine, token=token)
    assert body["decision"] == "deny" and _codes(body) == ["override_token_action_mismatch"]


async def test_invalid_and_expired_tokens(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    approval_id, token = await _approved_token(client, org, agent)
    runtime = client.app.state.runtime
    s = runtime.settings
    expired, _, _ = issue_override(
        runtime.keys, s, approval_id=approval_id, org_id=org.org_id, uapk_id=UAPK_ID, agent_id=AGENT_ID,
        capability="stripe:refund", params=REFUND["params"], amount=REFUND["amount"], currency=REFUND["currency"],
        ttl_seconds=60, now=time.time() - 3600,
    )
    assert _codes(await _execute(client, agent, token=expired)) == ["override_token_expired"]
    login = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    session = login.json()["access_token"]
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    body_claims = {k: v for k, v in claims.items() if k not in ("iat", "nbf", "exp")}
    captyp = sign(runtime.keys, CAPABILITY_TYP, body_claims, 300)
    sesstyp = sign(runtime.keys, SESSION_TYP, body_claims, 300)
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload[:-4]}AAAA.{sig}"
    for bad in (session, captyp, sesstyp, tampered, "not-a-token"):
        body = await _execute(client, agent, token=bad)
        assert body["decision"] == "deny" and _codes(body) == ["override_token_invalid"], body
    # The genuine token still works after all the rejected ones.
    assert (await _execute(client, agent, token=token))["decision"] == "allow"
