"""Management changes: each one makes exactly one audit event, with the actor and the target."""
from __future__ import annotations

from typing import Any

from tests.conftest import make_key
from tests.gateway.factories import action, add_manifest


def _doc(uapk_id: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "version": "1.0",
        "agent": {"id": uapk_id, "name": uapk_id.title(), "version": version, "team": "support"},
        "capabilities": {"requested": ["email:send", "crm:read"]},
        "constraints": {"max_actions_per_hour": 100, "max_actions_per_day": 1000},
    }


async def _changes(client: Any, org: Any) -> list[dict[str, Any]]:
    await client.app.state.audit.flush()
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/events", params={"limit": 100}, headers=org.headers)
    assert r.status_code == 200, r.text
    return [e for e in reversed(r.json()["items"]) if not e["kind"].startswith("gateway.")]


async def _step(client: Any, org: Any, seen: int, kind: str, **expect: Any) -> tuple[int, dict[str, Any]]:
    events = await _changes(client, org)
    assert len(events) == seen + 1, [e["kind"] for e in events]
    e = events[-1]
    assert e["kind"] == kind, e
    for k, v in expect.items():
        assert e[k] == v, (k, e)
    assert e["request_id"]
    return seen + 1, e


async def test_manifest_transitions(client: Any, org: Any) -> None:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    owner_actor = "api_key:"
    seen = len(await _changes(client, org))
    r = await client.post(base, json=_doc("audit-bot"), headers=org.headers)
    assert r.status_code == 201, r.text
    mid = r.json()["manifest_id"]
    seen, e = await _step(client, org, seen, "manifest.registered", uapk_id="audit-bot")
    assert e["actor"].startswith(owner_actor) and e["details"]["manifest_id"] == mid
    for verb, body, status in [("approve", {}, "active"), ("suspend", {"reason": "incident"}, "suspended"),
                               ("reactivate", {}, "active"), ("revoke", {"reason": "retired"}, "revoked")]:
        r = await client.post(f"{base}/{mid}/{verb}", json=body, headers=org.headers)
        assert r.status_code == 200, r.text
        seen, e = await _step(client, org, seen, f"manifest.{verb}", uapk_id="audit-bot")
        assert e["details"]["manifest_id"] == mid and e["details"]["to_status"] == status
    # A refused transition changes nothing and records nothing.
    r = await client.post(f"{base}/{mid}/approve", json={}, headers=org.headers)
    assert r.status_code == 409
    assert len(await _changes(client, org)) == seen


async def test_keys_and_members(client: Any, org: Any) -> None:
    seen = len(await _changes(client, org))
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "ci", "role": "viewer"}, headers=org.headers)
    assert r.status_code == 201
    key_id = r.json()["id"]
    seen, e = await _step(client, org, seen, "api_key.created")
    assert e["details"]["key_id"] == key_id and e["details"]["role"] == "viewer"
    assert r.json()["key"] not in str(e)  # never the secret
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys/{key_id}/revoke", headers=org.headers)
    assert r.status_code == 200
    seen, e = await _step(client, org, seen, "api_key.revoked")
    assert e["details"]["key_id"] == key_id
    r = await client.post(f"/api/v1/orgs/{org.org_id}/users", json={"email": "bob@acme.com", "role": "viewer",
                                                                    "password": "bob-pass-123"}, headers=org.headers)
    assert r.status_code == 202, r.text
    seen, e = await _step(client, org, seen, "member.invited")
    assert e["details"]["invitation_id"] == r.json()["invitation_id"] and "bob-pass-123" not in str(e)
    token = (await client.post("/api/v1/auth/login", json={"email": "bob@acme.com", "password": "bob-pass-123"})).json()["access_token"]
    r = await client.post(f"/api/v1/invitations/{r.json()['invitation_id']}/accept", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    seen, e = await _step(client, org, seen, "member.added", actor="user:bob@acme.com")
    uid = e["details"]["user_id"]
    assert uid and e["details"]["role"] == "viewer" and e["details"]["email"] == "bob@acme.com"
    assert "bob-pass-123" not in str(e)
    r = await client.patch(f"/api/v1/orgs/{org.org_id}/users/{uid}", json={"role": "approver"}, headers=org.headers)
    assert r.status_code == 200
    seen, e = await _step(client, org, seen, "member.role_changed")
    assert e["details"]["role"] == "approver"
    r = await client.delete(f"/api/v1/orgs/{org.org_id}/users/{uid}", headers=org.headers)
    assert r.status_code == 204
    seen, e = await _step(client, org, seen, "member.removed")
    assert e["details"]["user_id"] == uid


async def test_session_user_is_the_actor(client: Any, org: Any) -> None:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    token = r.json()["access_token"]
    seen = len(await _changes(client, org))
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "by-user", "role": "viewer"},
                          headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201
    seen, e = await _step(client, org, seen, "api_key.created", actor=f"user:{org.email}")


async def test_approval_decisions(client: Any, org: Any) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "support-bot", approved=["email:send", "stripe:refund"],
                       require_human_approval=["stripe:refund"], max_per_hour=100, max_per_day=100)
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    ids = []
    for amount in (5, 6):  # two different actions (a repeated one reuses its pending approval)
        r = await client.post("/api/v1/gateway/execute", json=action(tool="stripe", type="refund", amount=amount, currency="EUR"),
                              headers=agent)
        assert r.json()["decision"] == "escalate", r.text
        ids.append(r.json()["approval_id"])
    seen = len(await _changes(client, org))
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{ids[0]}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    seen, e = await _step(client, org, seen, "approval.approved", uapk_id="support-bot", capability="stripe:refund")
    assert e["details"]["approval_id"] == ids[0]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{ids[1]}/deny", json={"reason": "no"}, headers=org.headers)
    assert r.status_code == 200, r.text
    seen, e = await _step(client, org, seen, "approval.denied")
    # Deciding again is refused and records nothing.
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{ids[1]}/approve", json={}, headers=org.headers)
    assert r.status_code == 409
    assert len(await _changes(client, org)) == seen


async def test_capability_tokens(client: Any, org: Any) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "support-bot", approved=["email:send", "crm:read"])
    seen = len(await _changes(client, org))
    r = await client.post(f"/api/v1/orgs/{org.org_id}/capability-tokens", headers=org.headers,
                          json={"uapk_id": "support-bot", "agent_id": "a1", "capabilities": ["crm:read"]})
    assert r.status_code == 201, r.text
    token_id = r.json()["token_id"]
    seen, e = await _step(client, org, seen, "capability_token.issued", uapk_id="support-bot", agent_id="a1")
    assert e["details"]["token_id"] == token_id and r.json()["token"] not in str(e)
    r = await client.post(f"/api/v1/orgs/{org.org_id}/capability-tokens/{token_id}/revoke", headers=org.headers)
    assert r.status_code == 200, r.text
    seen, e = await _step(client, org, seen, "capability_token.revoked")
    assert e["details"]["token_id"] == token_id


async def test_agent_issued_capability_token(client: Any, org: Any) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "support-bot", approved=["email:send", "crm:read"])
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    seen = len(await _changes(client, org))
    r = await client.post("/api/v1/gateway/tokens", headers=agent,
                          json={"uapk_id": "support-bot", "agent_id": "a2", "capabilities": ["email:send"]})
    assert r.status_code == 201, r.text
    seen, e = await _step(client, org, seen, "capability_token.issued", agent_id="a2")
    assert e["details"]["via"] == "gateway" and e["actor"].startswith("api_key:")


async def test_org_creation_starts_its_chain(client: Any, org: Any) -> None:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    bearer = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await client.post("/api/v1/orgs", json={"name": "Initech", "slug": "initech"}, headers=bearer)
    assert r.status_code == 201, r.text
    new_org = r.json()["org_id"]
    await client.app.state.audit.flush()
    r = await client.get(f"/api/v1/orgs/{new_org}/audit/events", headers=bearer)
    assert r.status_code == 200, r.text
    (e,) = r.json()["items"]
    assert e["kind"] == "org.created" and e["seq"] == 1 and e["actor"] == f"user:{org.email}"


async def test_change_not_made_when_it_cannot_be_audited(client: Any, org: Any) -> None:
    """Fail closed: the audit trail refusing the event rolls the change back (503)."""
    sink = client.app.state.audit
    sink._accepting = False
    try:
        r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "ghost", "role": "viewer"},
                              headers=org.headers)
        assert r.status_code == 503, r.text
    finally:
        sink._accepting = True
    r = await client.get(f"/api/v1/orgs/{org.org_id}/api-keys", headers=org.headers)
    assert "ghost" not in [k["name"] for k in r.json()["items"]]
