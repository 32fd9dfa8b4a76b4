"""Shadow deployments: the live set decides, the shadow set is evaluated and differences are
recorded; promote or drop with one call. Both backends."""
from __future__ import annotations

from typing import Any

from tests.conftest import Org, assert_error, make_key
from tests.gateway.factories import action, add_manifest
from tests.policies.test_policies_api import EVAL, EXEC, add_rule, base, decide, rt

SHADOW_RULES = [{"id": "support-no-delete", "subject": "team:support", "capability": "crm:delete", "effect": "deny"},
                {"id": "human-email", "subject": "*", "capability": "email:send", "effect": "escalate",
                 "conditions": {"jurisdiction_in": ["US"]}}]


class CountingQuotas:
    """Wraps the gateway's quota backend and counts its calls (each is one Redis round trip
    in Redis mode)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls = 0

    async def check(self, *a: Any, **k: Any) -> Any:
        self.calls += 1
        return await self.inner.check(*a, **k)

    async def spend(self, *a: Any, **k: Any) -> Any:
        self.calls += 1
        return await self.inner.spend(*a, **k)


async def test_shadow_records_differences_and_live_decides(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*", "email:send"], team="support",
                       max_per_hour=3)
    key = await make_key(client, org, "agent")
    gateway = client.app.state.gateway
    counting = CountingQuotas(gateway.quotas)
    gateway.quotas = counting
    assert_error(await client.get(f"{base(org)}/shadow", headers=org.headers), 404, "NOT_FOUND")
    r = await client.post(f"{base(org)}/shadow", json={"rules": SHADOW_RULES}, headers=org.headers)
    assert r.status_code == 201, r.text
    assert r.json()["shadow_version"] == 1 and r.json()["rules"] == SHADOW_RULES
    # live decides (no rules): allow; shadow would deny -> one diff per request
    delete = action("support-bot", tool="crm", type="delete")
    out = await decide(client, key, delete, EXEC)
    assert out["decision"] == "allow" and ".shadow" not in out["policy_version"]
    assert counting.calls == 1  # the shadow evaluation reuses the live quota result
    await decide(client, key, delete, EVAL)
    assert counting.calls == 2
    # agreement: no diff
    assert (await decide(client, key, action("support-bot", tool="crm", type="read"), EXEC))["decision"] == "allow"
    # the shadow's escalate (counterparty in the US) vs live allow
    mail = action("support-bot")
    mail["counterparty"] = {"jurisdiction": "US"}
    assert (await decide(client, key, mail, EVAL))["decision"] == "allow"
    # quotas were spent only by the live decisions (2 executes of 3 per hour)
    assert (await decide(client, key, delete, EXEC))["decision"] == "allow"
    assert (await decide(client, key, delete, EXEC))["decision"] == "deny"  # hourly budget: 3 spent
    r = await client.get(f"{base(org)}/shadow/diffs", headers={"X-API-Key": await make_key(client, org, "viewer")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 5
    items = list(reversed(body["items"]))  # oldest first
    assert [(d["mode"], d["live_decision"], d["shadow_decision"]) for d in items] == [
        ("execute", "allow", "deny"), ("evaluate", "allow", "deny"), ("evaluate", "allow", "escalate"),
        ("execute", "allow", "deny"), ("execute", "deny", "deny")]
    # same decision, different reasons is a difference too
    assert items[4]["live_reasons"][0]["code"] == "hourly_budget_exceeded"
    assert items[4]["shadow_reasons"][0]["code"] == "policy_denied"
    first = items[0]
    assert first["uapk_id"] == "support-bot" and first["capability"] == "crm:delete" and first["shadow_version"] == 1
    assert first["shadow_reasons"][0]["code"] == "policy_denied"
    assert first["shadow_reasons"][0]["details"]["rule"] == "support-no-delete"
    assert first["live_reasons"][0]["code"] == "all_checks_passed"
    assert first["action"]["tool"] == "crm" and first["created_at"].endswith("Z")

    # promote: the shadow set becomes the next live version, and the shadow is gone
    r = await client.post(f"{base(org)}/shadow/promote", headers=org.headers)
    assert r.status_code == 200 and r.json() == {"version": 1}
    assert_error(await client.get(f"{base(org)}/shadow", headers=org.headers), 404, "NOT_FOUND")
    assert (await client.get(f"{base(org)}/rules", headers=org.headers)).json() == {"version": 1, "rules": SHADOW_RULES}
    out = await decide(client, key, delete, EVAL)
    assert out["decision"] == "deny" and out["policy_version"].endswith(".r1")
    versions = (await client.get(f"{base(org)}/versions", headers=org.headers)).json()
    assert versions["items"][0]["change"] == "promote shadow 1"
    assert_error(await client.post(f"{base(org)}/shadow/promote", headers=org.headers), 404, "NOT_FOUND")


async def test_drop_shadow_keeps_live_and_stops_recording(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*", "email:send"], team="support")
    key = await make_key(client, org, "agent")
    await add_rule(client, org, {"id": "live-deny", "subject": "*", "capability": "crm:export", "effect": "deny"})
    r = await client.post(f"{base(org)}/shadow", json={"rules": []}, headers=org.headers)
    assert r.status_code == 201
    out = await decide(client, key, action("support-bot", tool="crm", type="export"))
    assert out["decision"] == "deny"  # live
    author = {"X-API-Key": await make_key(client, org, "policy_author")}
    viewer = {"X-API-Key": await make_key(client, org, "viewer")}
    assert_error(await client.delete(f"{base(org)}/shadow", headers=viewer), 403, "PERMISSION_DENIED")
    r = await client.delete(f"{base(org)}/shadow", headers=author)
    assert r.status_code == 200, r.text
    assert_error(await client.delete(f"{base(org)}/shadow", headers=author), 404, "NOT_FOUND")
    assert client.app.state.gateway.state.peek(org.org_id).shadow is None
    await decide(client, key, action("support-bot", tool="crm", type="export"))
    diffs = (await client.get(f"{base(org)}/shadow/diffs", headers=viewer)).json()
    assert diffs["total"] == 1 and diffs["items"][0]["shadow_decision"] == "allow"
    assert (await client.get(f"{base(org)}/rules", headers=org.headers)).json()["version"] == 1


async def test_shadow_rules_are_validated(client: Any, org: Org) -> None:
    r = await client.post(f"{base(org)}/shadow", json={"rules": [{"subject": "*", "capability": "x", "effect": "deny"}]},
                          headers=org.headers)
    assert [d["field"] for d in assert_error(r, 400, "VALIDATION_ERROR")["details"]] == ["rules.0.capability"]
    r = await client.post(f"{base(org)}/shadow", json={"rules": [], "extra": 1}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_recorder_buffer_is_bounded(client: Any, org: Org) -> None:
    from gateway.shadow import ShadowRecorder

    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*"], team="support")
    await client.post(f"{base(org)}/shadow", json={"rules": SHADOW_RULES}, headers=org.headers)
    gateway = client.app.state.gateway
    compiled = await gateway.state.get(org.org_id)
    recorder = ShadowRecorder(rt(client), capacity=3, interval=3600)
    import msgspec

    from gateway.schemas import GatewayActionRequest

    req = msgspec.convert(action("support-bot", tool="crm", type="delete"), GatewayActionRequest)
    for _ in range(5):
        live = await gateway.explain(req, compiled)
        recorder.observe(gateway.verifiers, req, compiled, live, execute=False, uapk_ids=None)
    assert len(recorder.buffer) == 3 and recorder.dropped == 2
    assert await recorder.flush() == 3
    await recorder.close()
