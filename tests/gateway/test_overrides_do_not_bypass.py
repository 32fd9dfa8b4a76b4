"""What an override token does not do (docs/gateway.md step 4, docs/approvals.md), on both
backends: sent with an action that needs no approval it is ignored — neither checked nor
spent — and a valid, unused token does not bypass a manifest that is no longer active or a
deny rule added after the approval. Neither refusal spends it either."""
from __future__ import annotations

from typing import Any

from tests.conftest import Org, make_key

EXECUTE = "/api/v1/gateway/execute"
UAPK = "refund-bot"
MANIFEST: dict[str, Any] = {
    "version": "1.0",
    "agent": {"id": UAPK, "name": "Refund Bot", "version": "1.0.0"},
    "capabilities": {"requested": ["email:send", "stripe:refund"]},
    "constraints": {"max_actions_per_hour": 100, "max_actions_per_day": 1000, "require_human_approval": ["stripe:refund"]},
}
REFUND = {"uapk_id": UAPK, "agent_id": "agent-1",
          "action": {"type": "refund", "tool": "stripe", "params": {"charge_id": "ch_1"}, "amount": 25.0, "currency": "EUR"}}
EMAIL = {"uapk_id": UAPK, "agent_id": "agent-1", "action": {"type": "send", "tool": "email", "params": {"to": "a@b.c"}}}


async def _setup(client: Any, org: Org) -> tuple[str, dict[str, str]]:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    r = await client.post(base, json=MANIFEST, headers=org.headers)
    assert r.status_code == 201, r.text
    manifest_id = r.json()["manifest_id"]
    r = await client.post(f"{base}/{manifest_id}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    return manifest_id, {"X-API-Key": await make_key(client, org, "agent", [UAPK])}


async def _token(client: Any, org: Org, agent: dict[str, str]) -> tuple[str, str]:
    r = await client.post(EXECUTE, json=REFUND, headers=agent)
    assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text
    approval_id = r.json()["approval_id"]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    return approval_id, r.json()["override_token"]


async def _execute(client: Any, agent: dict[str, str], body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    r = await client.post(EXECUTE, json={**body, "override_token": token} if token else body, headers=agent)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _code(out: dict[str, Any]) -> tuple[str, str]:
    return out["decision"], out["reasons"][0]["code"]


async def _used_at(client: Any, org: Org, approval_id: str) -> Any:
    await client.app.state.gateway.drain()  # the use is recorded off the response path
    r = await client.get(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    return r.json()["override_used_at"]


async def test_a_token_sent_with_an_action_that_needs_no_approval_is_ignored_and_not_spent(client: Any, org: Org) -> None:
    _, agent = await _setup(client, org)
    approval_id, token = await _token(client, org, agent)
    for sent in (token, "not-a-token", token):
        out = await _execute(client, agent, EMAIL, sent)  # neither checked (garbage passes) nor spent
        assert _code(out) == ("allow", "all_checks_passed"), out
    assert await _used_at(client, org, approval_id) is None
    # Still unused: it allows the action it was issued for, once.
    assert _code(await _execute(client, agent, REFUND, token)) == ("allow", "override_token_accepted")
    assert _code(await _execute(client, agent, REFUND, token)) == ("deny", "override_token_already_used")
    assert await _used_at(client, org, approval_id) is not None


async def test_a_valid_token_is_denied_once_the_manifest_is_suspended(client: Any, org: Org) -> None:
    manifest_id, agent = await _setup(client, org)
    approval_id, token = await _token(client, org, agent)
    base = f"/api/v1/orgs/{org.org_id}/manifests/{manifest_id}"
    r = await client.post(f"{base}/suspend", json={"reason": "security review"}, headers=org.headers)
    assert r.status_code == 200, r.text
    out = await _execute(client, agent, REFUND, token)
    assert _code(out) == ("deny", "manifest_not_active"), out
    assert out["reasons"][0]["details"]["status"] == "suspended"
    assert await _used_at(client, org, approval_id) is None
    # The refusal did not spend it: reactivated, the token allows its action once.
    r = await client.post(f"{base}/reactivate", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert _code(await _execute(client, agent, REFUND, token)) == ("allow", "override_token_accepted")


async def test_a_valid_token_is_denied_after_a_deny_rule_is_added(client: Any, org: Org) -> None:
    _, agent = await _setup(client, org)
    approval_id, token = await _token(client, org, agent)
    rules = f"/api/v1/orgs/{org.org_id}/policies/rules"
    rule = {"id": "no-refunds", "subject": f"agent:{UAPK}", "capability": "stripe:refund", "effect": "deny"}
    r = await client.post(rules, json=rule, headers=org.headers)
    assert r.status_code == 201, r.text
    out = await _execute(client, agent, REFUND, token)
    assert _code(out) == ("deny", "policy_denied") and out["reasons"][0]["details"]["rule"] == "no-refunds", out
    assert await _used_at(client, org, approval_id) is None
    r = await client.delete(f"{rules}/no-refunds", headers=org.headers)
    assert r.status_code == 200, r.text
    assert _code(await _execute(client, agent, REFUND, token)) == ("allow", "override_token_accepted")
