"""Policies API and the gateway's enforcement of org rules, on both backends."""
from __future__ import annotations

from typing import Any

from tests.conftest import Org, assert_error, make_key
from tests.gateway.factories import action, add_manifest

EVAL = "/api/v1/gateway/evaluate"
EXEC = "/api/v1/gateway/execute"


def rt(client: Any) -> Any:
    return client.app.state.runtime


def base(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/policies"


async def add_rule(client: Any, org: Org, rule: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await client.post(f"{base(org)}/rules", json=rule, headers=headers or org.headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def decide(client: Any, key: str, body: dict[str, Any], path: str = EVAL) -> dict[str, Any]:
    r = await client.post(path, json=body, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def setup(client: Any, org: Org) -> str:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*", "email:send", "payments:*"],
                       team="support")
    await add_manifest(rt(client), org.org_id, "sales-bot", approved=["crm:*", "email:send", "payments:*"],
                       team="sales")
    return await make_key(client, org, "agent")


# --- roles and validation --------------------------------------------------------------------
async def test_roles_viewer_reads_author_writes(client: Any, org: Org) -> None:
    viewer = {"X-API-Key": await make_key(client, org, "viewer")}
    author = {"X-API-Key": await make_key(client, org, "policy_author")}
    rule = {"id": "no-delete", "subject": "*", "capability": "crm:delete", "effect": "deny"}
    assert_error(await client.post(f"{base(org)}/rules", json=rule, headers=viewer), 403, "PERMISSION_DENIED")
    out = await add_rule(client, org, rule, author)
    assert out == {"version": 1, "rule": rule}
    r = await client.get(f"{base(org)}/rules", headers=viewer)
    assert r.status_code == 200 and r.json() == {"version": 1, "rules": [rule]}
    assert_error(await client.delete(f"{base(org)}/rules/no-delete", headers=viewer), 403, "PERMISSION_DENIED")
    r = await client.delete(f"{base(org)}/rules/no-delete", headers=author)
    assert r.status_code == 200 and r.json() == {"version": 2}
    assert_error(await client.delete(f"{base(org)}/rules/no-delete", headers=author), 404, "NOT_FOUND")


async def test_other_org_is_404(client: Any, org: Org, other_org: Org) -> None:
    r = await client.get(f"{base(org)}/rules", headers=other_org.headers)
    assert_error(r, 404, "NOT_FOUND")


async def test_bad_rules_are_400_with_dotted_fields(client: Any, org: Org) -> None:
    bad = {"subject": "group:x", "capability": "crm:**", "effect": "permit",
           "conditions": {"amount_above": -1, "hours_utc": "7-19", "currency": ["EURO"], "weekdays": ["someday"],
                          "colour": "red"}}
    body = assert_error(await client.post(f"{base(org)}/rules", json=bad, headers=org.headers), 400, "VALIDATION_ERROR")
    fields = {d["field"] for d in body["details"]}
    assert {"subject", "capability", "effect", "conditions.amount_above", "conditions.hours_utc",
            "conditions.currency.0", "conditions.weekdays.0", "conditions.colour"} <= fields
    r = await client.post(f"{base(org)}/rules", json={"subject": "agent:UPPER", "capability": "crm:read",
                                                      "effect": "deny"}, headers=org.headers)
    assert {d["field"] for d in assert_error(r, 400, "VALIDATION_ERROR")["details"]} == {"subject"}
    r = await client.post(f"{base(org)}/rules", content=b"[1]", headers={**org.headers, "content-type": "application/json"})
    assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post(f"{base(org)}/rules", json={"subject": "*", "capability": "crm:read", "effect": "deny",
                                                      "conditions": {"amount_above": 10, "amount_below": 5}},
                          headers=org.headers)
    assert [d["field"] for d in assert_error(r, 400, "VALIDATION_ERROR")["details"]] == ["conditions.amount_below"]
    # nothing was written
    r = await client.get(f"{base(org)}/versions", headers=org.headers)
    assert r.json() == {"items": [], "total": 0}


async def test_duplicate_rule_id_is_409(client: Any, org: Org) -> None:
    rule = {"id": "x1", "subject": "*", "capability": "crm:delete", "effect": "deny"}
    await add_rule(client, org, rule)
    assert_error(await client.post(f"{base(org)}/rules", json=rule, headers=org.headers), 409, "CONFLICT")


async def test_generated_rule_id(client: Any, org: Org) -> None:
    out = await add_rule(client, org, {"subject": "*", "capability": "crm:delete", "effect": "deny"})
    assert out["rule"]["id"].startswith("r-")


# --- enforcement in the gateway --------------------------------------------------------------
async def test_precedence_deny_beats_escalate_beats_allow(client: Any, org: Org) -> None:
    key = await setup(client, org)
    body = action("support-bot", tool="payments", type="send", amount=10, currency="EUR")
    assert (await decide(client, key, body))["decision"] == "allow"
    await add_rule(client, org, {"id": "a", "subject": "*", "capability": "payments:send", "effect": "allow"})
    assert (await decide(client, key, body))["decision"] == "allow"
    await add_rule(client, org, {"id": "e", "subject": "*", "capability": "payments:*", "effect": "escalate"})
    out = await decide(client, key, body)
    assert out["decision"] == "escalate"
    assert out["reasons"][0] == {"code": "requires_human_approval", "message": out["reasons"][0]["message"],
                                 "details": {"capability": "payments:send", "rule": "policy:e"}}
    assert out["trace"][3] == {"check": "human_approval", "result": "escalate",
                               "detail": "a human must approve this action", "rule": "policy:e"}
    await add_rule(client, org, {"id": "d", "subject": "agent:support-bot", "capability": "*:send", "effect": "deny"})
    out = await decide(client, key, body)
    assert out["decision"] == "deny"
    assert out["reasons"][0]["code"] == "policy_denied" and out["reasons"][0]["details"]["rule"] == "d"
    assert out["trace"][2]["result"] == "fail" and out["trace"][2]["rule"] == "policy:d"
    # the other agent is not named by the deny rule: escalate still wins over allow there
    assert (await decide(client, key, action("sales-bot", tool="payments", type="send")))["decision"] == "escalate"


async def test_allow_rule_never_grants_and_narrows(client: Any, org: Org) -> None:
    key = await setup(client, org)
    # files:read is not in any manifest: an allow rule does not grant it
    await add_rule(client, org, {"id": "files", "subject": "*", "capability": "files:read", "effect": "allow"})
    out = await decide(client, key, action("support-bot", tool="files", type="read"))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "capability_not_granted"
    # an allow rule with conditions: only under those conditions
    await add_rule(client, org, {"id": "small", "subject": "team:support", "capability": "payments:send",
                                 "effect": "allow", "conditions": {"amount_below": 100}})
    small = await decide(client, key, action("support-bot", tool="payments", type="send", amount=50))
    assert small["decision"] == "allow" and small["trace"][2]["result"] == "pass"
    big = await decide(client, key, action("support-bot", tool="payments", type="send", amount=500))
    assert big["decision"] == "deny" and big["reasons"][0]["code"] == "policy_conditions_not_met"
    assert big["reasons"][0]["details"] == {"capability": "payments:send", "rule": "small"}
    unknown = await decide(client, key, action("support-bot", tool="payments", type="send"))
    assert unknown["decision"] == "deny"  # no amount: an allow condition fails closed
    # capabilities no allow rule matches are untouched; other teams are untouched
    assert (await decide(client, key, action("support-bot", tool="payments", type="refund")))["decision"] == "allow"
    assert (await decide(client, key, action("sales-bot", tool="payments", type="send", amount=500)))["decision"] == "allow"


async def test_team_subjects(client: Any, org: Org) -> None:
    key = await setup(client, org)
    await add_rule(client, org, {"id": "support-no-delete", "subject": "team:support", "capability": "crm:delete",
                                 "effect": "deny"})
    out = await decide(client, key, action("support-bot", tool="crm", type="delete"))
    assert out["decision"] == "deny" and out["reasons"][0]["details"]["rule"] == "support-no-delete"
    assert (await decide(client, key, action("sales-bot", tool="crm", type="delete")))["decision"] == "allow"
    # membership follows the manifest's agent.team
    await add_manifest(rt(client), org.org_id, "sales-bot", approved=["crm:*"], team="support", version="2.0.0")
    # the newest active manifest decides: a second active one (created later) now names team support
    out = await decide(client, key, action("sales-bot", tool="crm", type="delete"))
    assert out["decision"] == "deny"


async def test_conditions_in_the_gateway(client: Any, org: Org) -> None:
    key = await setup(client, org)
    await add_rule(client, org, {"id": "big-eur", "subject": "*", "capability": "payments:*", "effect": "escalate",
                                 "conditions": {"amount_above": 1000, "currency": ["EUR"]}})
    await add_rule(client, org, {"id": "sanctioned", "subject": "*", "capability": "payments:*", "effect": "deny",
                                 "conditions": {"jurisdiction_in": ["KP", "IR"]}})

    def pay(amount: float, currency: str, jurisdiction: str | None = None) -> dict[str, Any]:
        b = action("support-bot", tool="payments", type="send", amount=amount, currency=currency)
        b["counterparty"] = {"jurisdiction": jurisdiction} if jurisdiction else {"name": "x"}
        return b

    assert (await decide(client, key, pay(1000, "EUR", "DE")))["decision"] == "allow"  # not above
    assert (await decide(client, key, pay(1000.01, "EUR", "DE")))["decision"] == "escalate"
    assert (await decide(client, key, pay(5000, "usd", "DE")))["decision"] == "allow"  # other currency
    assert (await decide(client, key, pay(5000, "eur", "DE")))["decision"] == "escalate"  # case-insensitive
    assert (await decide(client, key, pay(10, "EUR", "kp")))["decision"] == "deny"
    # no jurisdiction: a deny condition fails closed
    assert (await decide(client, key, pay(10, "EUR")))["decision"] == "deny"


async def test_escalation_by_rule_creates_an_approval_on_execute(client: Any, org: Org) -> None:
    key = await setup(client, org)
    await add_rule(client, org, {"id": "human-refunds", "subject": "*", "capability": "payments:refund",
                                 "effect": "escalate"})
    body = action("support-bot", tool="payments", type="refund", amount=20, currency="EUR")
    out = await decide(client, key, body, EXEC)
    assert out["decision"] == "escalate" and out["approval_id"]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{out['approval_id']}/approve", json={},
                          headers=org.headers)
    assert r.status_code == 200, r.text
    token = r.json()["override_token"]
    again = await decide(client, key, {**body, "override_token": token}, EXEC)
    assert again["decision"] == "allow" and again["reasons"][0]["code"] == "override_token_accepted"
    # single use; and a deny rule added since beats the override token
    await add_rule(client, org, {"id": "no-refunds", "subject": "*", "capability": "payments:refund", "effect": "deny"})
    out = await decide(client, key, {**body, "override_token": token}, EVAL)
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "policy_denied"


# --- versions and rollback -------------------------------------------------------------------
async def test_versions_and_rollback(client: Any, org: Org) -> None:
    key = await setup(client, org)
    author = {"X-API-Key": await make_key(client, org, "policy_author", name="alice-key")}
    r1 = {"id": "one", "subject": "*", "capability": "crm:delete", "effect": "deny"}
    r2 = {"id": "two", "subject": "*", "capability": "email:send", "effect": "deny"}
    await add_rule(client, org, r1, author)
    await add_rule(client, org, r2, author)
    ev = await decide(client, key, action("support-bot"))
    assert ev["decision"] == "deny" and ev["policy_version"].endswith(".r2")
    r = await client.get(f"{base(org)}/versions", headers=org.headers)
    body = r.json()
    assert body["total"] == 2 and [v["version"] for v in body["items"]] == [2, 1]
    assert body["items"][0]["author"] == "alice-key" and body["items"][0]["change"] == "add rule two"
    assert body["items"][0]["created_at"].endswith("Z") and body["items"][0]["rule_count"] == 2
    v1 = (await client.get(f"{base(org)}/versions/1", headers=org.headers)).json()
    assert v1["rules"] == [r1] and v1["version"] == 1
    assert_error(await client.get(f"{base(org)}/versions/9", headers=org.headers), 404, "NOT_FOUND")
    r = await client.post(f"{base(org)}/versions/1/rollback", headers=author)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["version"] == 3 and out["rules"] == [r1] and out["change"] == "rollback to version 1"
    assert out["author"] == "alice-key"
    ev = await decide(client, key, action("support-bot"))
    assert ev["decision"] == "allow" and ev["policy_version"].endswith(".r3")
    assert (await client.get(f"{base(org)}/rules", headers=org.headers)).json() == {"version": 3, "rules": [r1]}
    assert_error(await client.post(f"{base(org)}/versions/7/rollback", headers=author), 404, "NOT_FOUND")
    viewer = {"X-API-Key": await make_key(client, org, "viewer")}
    assert_error(await client.post(f"{base(org)}/versions/1/rollback", headers=viewer), 403, "PERMISSION_DENIED")


# --- explain ---------------------------------------------------------------------------------
async def test_explain_returns_decision_trace_and_rules_and_spends_nothing(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["payments:*"], team="support", max_per_hour=1)
    key = await make_key(client, org, "agent")
    await add_rule(client, org, {"id": "big", "subject": "team:support", "capability": "payments:*",
                                 "effect": "escalate", "conditions": {"amount_above": 1000}})
    await add_rule(client, org, {"id": "eu", "subject": "*", "capability": "payments:send", "effect": "allow",
                                 "conditions": {"currency": ["EUR"]}})
    viewer = {"X-API-Key": await make_key(client, org, "viewer")}
    body = action("support-bot", tool="payments", type="send", amount=5000, currency="EUR")
    for _ in range(3):
        r = await client.post(f"{base(org)}/explain", json=body, headers=viewer)
        assert r.status_code == 200, r.text
    out = r.json()
    assert out["decision"] == "escalate" and out["decided_by"] == "big" and out["policy_effect"] == "escalate"
    assert [s["check"] for s in out["trace"]] == ["manifest", "capability_token", "capability", "human_approval", "quota"]
    assert {m["id"]: m["conditions_hold"] for m in out["matched_rules"]} == {"big": True, "eu": True}
    assert out["casbin"]["effect"] == "escalate" and out["oracle_agrees"] is True
    assert out["casbin"]["explain"]["escalate"][4] == "big"
    # nothing spent (max 1 per hour), no approval created
    assert (await decide(client, key, action("support-bot", tool="payments", type="send", amount=5, currency="EUR"),
                         EXEC))["decision"] == "allow"
    from sqlalchemy import func, select

    from store.models import Approval

    async with rt(client).sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Approval))).scalar_one() == 0
    out = (await client.post(f"{base(org)}/explain", json=action("support-bot", tool="payments", type="send",
                                                                  amount=5, currency="USD"), headers=viewer)).json()
    assert out["decision"] == "deny" and out["decided_by"] == "eu" and out["policy_effect"] == "narrowed"
    assert out["oracle_agrees"] is True
    r = await client.post(f"{base(org)}/explain", json={"uapk_id": "support-bot"}, headers=viewer)
    assert_error(r, 400, "VALIDATION_ERROR")


# --- test before rollout ---------------------------------------------------------------------
async def test_candidate_rules_are_tested_and_live_untouched(client: Any, org: Org) -> None:
    key = await setup(client, org)
    candidate = [{"id": "no-night-email", "subject": "*", "capability": "email:send", "effect": "deny",
                  "conditions": {"outside_hours_utc": "07:00-19:00"}}]
    cases = [
        {"name": "day", "at": "2026-01-05T12:00:00Z", "request": action("support-bot"), "expect": {"decision": "allow"}},
        {"name": "night", "at": "2026-01-05T22:00:00Z", "request": action("support-bot"),
         "expect": {"decision": "deny", "reason": "policy_denied", "rule": "no-night-email"}},
        {"name": "wrong", "at": "2026-01-05T22:00:00Z", "request": action("support-bot"), "expect": {"decision": "allow"}},
    ]
    r = await client.post(f"{base(org)}/test", json={"rules": candidate, "cases": cases}, headers=org.headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["passed"] is False and out["total"] == 3 and out["failed"] == 1
    assert [c["passed"] for c in out["results"]] == [True, True, False]
    assert out["results"][2]["actual"] == {"decision": "deny", "reason": "policy_denied", "rule": "no-night-email"}
    # live untouched
    assert (await client.get(f"{base(org)}/rules", headers=org.headers)).json() == {"version": 0, "rules": []}
    assert (await decide(client, key, action("support-bot")))["decision"] == "allow"
    # without rules: the live set is tested
    r = await client.post(f"{base(org)}/test", json={"cases": cases[:1]}, headers=org.headers)
    assert r.json()["passed"] is True
    r = await client.post(f"{base(org)}/test", json={"rules": [{"subject": "x"}], "cases": [{"request": {}}]},
                          headers=org.headers)
    assert "rules.0.subject" in {d["field"] for d in assert_error(r, 400, "VALIDATION_ERROR")["details"]}


# --- audit -----------------------------------------------------------------------------------
async def test_policy_changes_are_audited(client: Any, org: Org) -> None:
    author_key = await make_key(client, org, "policy_author")
    author = {"X-API-Key": author_key}
    await add_rule(client, org, {"id": "x", "subject": "*", "capability": "crm:delete", "effect": "deny"}, author)
    await client.delete(f"{base(org)}/rules/x", headers=author)
    await client.post(f"{base(org)}/versions/1/rollback", headers=author)
    await client.post(f"{base(org)}/shadow", json={"rules": []}, headers=author)
    await client.post(f"{base(org)}/shadow/promote", headers=author)
    await client.app.state.audit.flush()
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/events", params={"limit": 100}, headers=org.headers)
    events = [e for e in r.json()["items"] if e["kind"].startswith("policy.")]
    assert [e["kind"] for e in reversed(events)] == [
        "policy.rule_added", "policy.rule_deleted", "policy.rollback", "policy.shadow_deployed", "policy.shadow_promoted"]
    added = events[-1]
    assert added["actor"].startswith("api_key:") and added["details"]["version"] == 1
    assert added["details"]["rule"]["id"] == "x"


async def test_concurrent_changes_get_distinct_versions(client: Any, org: Org) -> None:
    import asyncio

    rules = [{"id": f"c{i}", "subject": "*", "capability": f"crm:op{i}", "effect": "deny"} for i in range(6)]
    results = await asyncio.gather(*(client.post(f"{base(org)}/rules", json=r, headers=org.headers) for r in rules))
    assert [r.status_code for r in results] == [201] * 6, [r.text for r in results]
    assert sorted(r.json()["version"] for r in results) == [1, 2, 3, 4, 5, 6]
    live = (await client.get(f"{base(org)}/rules", headers=org.headers)).json()
    assert live["version"] == 6 and sorted(r["id"] for r in live["rules"]) == [f"c{i}" for i in range(6)]
