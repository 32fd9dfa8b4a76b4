"""Regression tests for the gateway-decision items of issue 11, on both backends.

Each test failed before its fix: the capability label, negative amounts, text shown to
approvers, capability tokens after reactivation, the state ``manifest_not_active`` names, and
fail-closed denials that did not say which field was missing.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from store.models import Approval
from tests.conftest import Org, assert_error, make_key
from tests.gateway.factories import action, add_manifest

EVAL = "/api/v1/gateway/evaluate"
EXEC = "/api/v1/gateway/execute"


def rt(client: Any) -> Any:
    return client.app.state.runtime


def policies(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/policies"


async def decide(client: Any, key: str, body: dict[str, Any], path: str = EXEC) -> dict[str, Any]:
    r = await client.post(path, json=body, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def add_rule(client: Any, org: Org, rule: dict[str, Any]) -> None:
    r = await client.post(f"{policies(org)}/rules", json=rule, headers=org.headers)
    assert r.status_code == 201, r.text


async def approvals(client: Any, org: Org) -> int:
    async with rt(client).sessions() as s:
        return int((await s.execute(select(func.count()).select_from(Approval)
                                    .where(Approval.org_id == org.org_id))).scalar_one())


def fields(body: dict[str, Any]) -> list[str]:
    return [d["field"] for d in body["details"]]


# --- 1. action.capability is what the action does -------------------------------------------
async def test_capability_label_cannot_dodge_human_approval_or_deny_rules(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*"], require_human_approval=["crm:delete"])
    await add_rule(client, org, {"id": "no-export", "subject": "*", "capability": "crm:export", "effect": "deny"})
    key = await make_key(client, org, "agent")
    h = {"X-API-Key": key}
    for typ in ("delete", "export"):
        for path in (EXEC, EVAL):
            body = assert_error(await client.post(path, json=action(tool="crm", type=typ, capability="crm:read"),
                                                  headers=h), 400, "VALIDATION_ERROR")
            assert fields(body) == ["action.capability"], body
    assert await approvals(client, org) == 0  # nothing was escalated for the refused requests
    # A capability equal to tool:type is still accepted, and decides like tool:type.
    out = await decide(client, key, action(tool="crm", type="delete", capability="crm:delete"))
    assert out["decision"] == "escalate" and out["reasons"][0]["code"] == "requires_human_approval"
    out = await decide(client, key, action(tool="crm", type="export", capability="crm:export"))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "policy_denied"
    assert (await decide(client, key, action(tool="crm", type="read", capability="crm:read")))["decision"] == "allow"


async def test_capability_label_rule_is_the_same_in_explain_and_policy_tests(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*"], require_human_approval=["crm:delete"])
    mismatch = action(tool="crm", type="delete", capability="crm:read")
    body = assert_error(await client.post(f"{policies(org)}/explain", json=mismatch, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert fields(body) == ["action.capability"]
    case = {"request": mismatch, "expect": {"decision": "allow"}}
    body = assert_error(await client.post(f"{policies(org)}/test", json={"cases": [case]}, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert fields(body) == ["cases.0.request.action.capability"]
    same = action(tool="crm", type="delete", capability="crm:delete")
    r = await client.post(f"{policies(org)}/explain", json=same, headers=org.headers)
    assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text


# --- 4. amounts are at least 0 ----------------------------------------------------------------
async def test_negative_amount_is_refused_on_every_path(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["payments:*"])
    await add_rule(client, org, {"id": "big", "subject": "*", "capability": "payments:*", "effect": "escalate",
                                 "conditions": {"amount_above": 1000}})
    key = await make_key(client, org, "agent")
    h = {"X-API-Key": key}
    negative = action(tool="payments", type="send", amount=-50000, currency="EUR")
    for path in (EXEC, EVAL):
        body = assert_error(await client.post(path, json=negative, headers=h), 400, "VALIDATION_ERROR")
        assert fields(body) == ["action.amount"], body
    body = assert_error(await client.post(f"{policies(org)}/explain", json=negative, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert fields(body) == ["action.amount"]
    case = {"request": negative, "expect": {"decision": "allow"}}
    body = assert_error(await client.post(f"{policies(org)}/test", json={"cases": [case]}, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert fields(body) == ["cases.0.request.action.amount"]
    # 0 and positive amounts still decide as before
    assert (await decide(client, key, action(tool="payments", type="send", amount=0)))["decision"] == "allow"
    out = await decide(client, key, action(tool="payments", type="send", amount=50000), EVAL)
    assert out["decision"] == "escalate"


async def test_negative_amount_cannot_pass_a_token_max_amount(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["payments:*"])
    key = await make_key(client, org, "agent")
    r = await client.post("/api/v1/gateway/tokens", headers={"X-API-Key": key}, json={
        "uapk_id": "support-bot", "agent_id": "agent-1", "capabilities": ["payments:send"],
        "constraints": {"max_amount": 100}})
    assert r.status_code == 201, r.text
    tok = r.json()["token"]
    body = assert_error(await client.post(EXEC, headers={"X-API-Key": key}, json=action(
        tool="payments", type="send", amount=-99999, capability_token=tok)), 400, "VALIDATION_ERROR")
    assert fields(body) == ["action.amount"]
    ok = await decide(client, key, action(tool="payments", type="send", amount=100, capability_token=tok))
    assert ok["decision"] == "allow"
    over = await decide(client, key, action(tool="payments", type="send", amount=100.5, capability_token=tok))
    assert over["reasons"][0]["code"] == "capability_not_in_token"


# --- 9. text shown to approvers ---------------------------------------------------------------
HOSTILE = {
    "ansi": "Refund \x1b[32mapproved\x1b[0m",
    "crlf": "Refund 10 EUR\r\nApproved by finance",
    "lone-cr": "delete everything\rread one record",
    "rlo": "invoice\u202egnp.exe",
    "zero-width": "pay\u200bpal",
    "bom": "\ufeffhello",
    "isolate": "a\u2066b\u2069",
    "c1": "a\x9bb",
    "del": "a\x7fb",
}


async def test_text_shown_to_approvers_is_refused_with_the_field_named(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["payments:*"],
                       require_human_approval=["payments:refund"])
    key = await make_key(client, org, "agent")
    h = {"X-API-Key": key}
    for name, text in HOSTILE.items():
        for path in (EXEC, EVAL):
            body = assert_error(await client.post(path, json=action(tool="payments", type="refund", description=text),
                                                  headers=h), 400, "VALIDATION_ERROR")
            assert fields(body) == ["action.description"], (name, body)
        for cp_field in ("id", "name", "email", "domain", "jurisdiction"):
            bad = {**action(tool="payments", type="refund"), "counterparty": {cp_field: text}}
            body = assert_error(await client.post(EXEC, json=bad, headers=h), 400, "VALIDATION_ERROR")
            assert fields(body) == [f"counterparty.{cp_field}"], (name, body)
    body = assert_error(await client.post(EXEC, json=action(tool="payments", type="refund", currency="EU\u200bR"),
                                          headers=h), 400, "VALIDATION_ERROR")
    assert fields(body) == ["action.currency"]
    case = {"request": action(tool="payments", type="refund", description=HOSTILE["rlo"]), "expect": {"decision": "allow"}}
    body = assert_error(await client.post(f"{policies(org)}/test", json={"cases": [case]}, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert fields(body) == ["cases.0.request.action.description"]
    assert await approvals(client, org) == 0  # nothing reached an approver
    # Ordinary text, accents, symbols and emoji are fine.
    clean = {**action(tool="payments", type="refund", description="Remboursement de 10 € — café ☕ für Jürgen",
                      amount=10, currency="EUR"),
             "counterparty": {"name": "Zoë O'Brien", "email": "zoe@example.com", "jurisdiction": "DE"}}
    out = await decide(client, key, clean)
    assert out["decision"] == "escalate"
    assert await approvals(client, org) == 1


async def test_approver_notes_and_rule_descriptions_use_the_same_text_rule(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}/approvals/00000000-0000-0000-0000-000000000000"
    for text in (HOSTILE["rlo"], HOSTILE["zero-width"], HOSTILE["lone-cr"], HOSTILE["ansi"]):
        body = assert_error(await client.post(f"{base}/approve", json={"notes": text}, headers=org.headers),
                            400, "VALIDATION_ERROR")
        assert fields(body) == ["notes"]
        body = assert_error(await client.post(f"{base}/deny", json={"reason": text}, headers=org.headers),
                            400, "VALIDATION_ERROR")
        assert fields(body) == ["reason"]
    # Notes may span lines (LF, CRLF, TAB): they get past validation (then 404: no such approval).
    r = await client.post(f"{base}/approve", json={"notes": "line one\r\nline two\n\tindented"}, headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    for text in (HOSTILE["del"], HOSTILE["rlo"], HOSTILE["c1"]):
        rule = {"subject": "*", "capability": "crm:delete", "effect": "deny", "description": text}
        body = assert_error(await client.post(f"{policies(org)}/rules", json=rule, headers=org.headers),
                            400, "VALIDATION_ERROR")
        assert fields(body) == ["description"]


# --- 12. a revoked capability token stays revoked after reactivation ---------------------------
def _manifest_doc(version: str = "1.0.0") -> dict[str, Any]:
    return {"version": "1.0", "agent": {"id": "support-bot", "name": "Support Bot", "version": version, "team": "support"},
            "capabilities": {"requested": ["crm:*"]}, "constraints": {"max_actions_per_hour": 100}}


async def _register_active(client: Any, org: Org, version: str = "1.0.0") -> str:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    r = await client.post(base, json=_manifest_doc(version), headers=org.headers)
    assert r.status_code == 201, r.text
    mid = r.json()["manifest_id"]
    r = await client.post(f"{base}/{mid}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    return mid  # type: ignore[no-any-return]


async def _token(client: Any, key: str) -> dict[str, Any]:
    r = await client.post("/api/v1/gateway/tokens", headers={"X-API-Key": key}, json={
        "uapk_id": "support-bot", "agent_id": "agent-1", "capabilities": ["crm:read"]})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_capability_token_stays_revoked_after_the_manifest_is_reactivated(client: Any, org: Org) -> None:
    from gateway.captokens import RevocationList

    base = f"/api/v1/orgs/{org.org_id}/manifests"
    mid = await _register_active(client, org)
    key = await make_key(client, org, "agent")
    issued = await _token(client, key)
    read = action(tool="crm", type="read", capability_token=issued["token"])
    assert (await decide(client, key, read))["decision"] == "allow"
    assert (await client.post(f"{base}/{mid}/suspend", json={"reason": "review"}, headers=org.headers)).status_code == 200
    assert (await decide(client, key, read))["reasons"][0]["code"] == "manifest_not_active"
    assert (await client.post(f"{base}/{mid}/reactivate", json={}, headers=org.headers)).status_code == 200
    out = await decide(client, key, read)
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "capability_token_revoked", out
    # The listing says so, and a process that starts now learns it from the database.
    r = await client.get(f"/api/v1/orgs/{org.org_id}/capability-tokens", headers=org.headers)
    (meta,) = [t for t in r.json()["items"] if t["token_id"] == issued["token_id"]]
    assert meta["revoked_at"] is not None and meta["revoked_by"]
    fresh = RevocationList()
    await fresh.refresh(rt(client))
    assert issued["token_id"] in fresh
    # A token issued after the reactivation works.
    again = await _token(client, key)
    assert (await decide(client, key, action(tool="crm", type="read", capability_token=again["token"])))["decision"] == "allow"


async def test_revoking_a_manifest_revokes_its_tokens(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    mid = await _register_active(client, org)
    key = await make_key(client, org, "agent")
    issued = await _token(client, key)
    assert (await client.post(f"{base}/{mid}/revoke", json={"reason": "gone"}, headers=org.headers)).status_code == 200
    r = await client.get(f"/api/v1/orgs/{org.org_id}/capability-tokens", headers=org.headers)
    (meta,) = [t for t in r.json()["items"] if t["token_id"] == issued["token_id"]]
    assert meta["revoked_at"] is not None


# --- manifest_not_active names the version that would be in force ------------------------------
async def test_manifest_not_active_names_the_suspended_version_not_a_newer_rejected_one(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    v101 = await _register_active(client, org, "1.0.1")
    key = await make_key(client, org, "agent")
    r = await client.post(base, json=_manifest_doc("1.1.0"), headers=org.headers)
    assert r.status_code == 201, r.text
    v110 = r.json()["manifest_id"]
    assert (await client.post(f"{base}/{v110}/reject", json={"reason": "too broad"}, headers=org.headers)).status_code == 200
    assert (await client.post(f"{base}/{v101}/suspend", json={"reason": "review"}, headers=org.headers)).status_code == 200
    out = await decide(client, key, action(tool="crm", type="read"))
    reason = out["reasons"][0]
    assert reason["code"] == "manifest_not_active"
    assert reason["details"]["status"] == "suspended" and reason["details"]["version"] == "1.0.1", reason
    assert "1.0.1" in reason["message"] and "suspended" in reason["message"]
    ev = await decide(client, key, action(tool="crm", type="read"), EVAL)
    assert ev["trace"][0]["rule"] == "status:suspended"


# --- fail-closed denials say which field was missing -------------------------------------------
async def test_fail_closed_denials_name_the_missing_field(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["payments:*"])
    await add_rule(client, org, {"id": "sanctioned", "subject": "*", "capability": "payments:*", "effect": "deny",
                                 "conditions": {"jurisdiction_in": ["KP", "IR"]}})
    key = await make_key(client, org, "agent")
    refund = action(tool="payments", type="refund", amount=20, currency="EUR")
    out = await decide(client, key, refund)
    reason = out["reasons"][0]
    assert out["decision"] == "deny" and reason["code"] == "policy_denied"
    assert reason["details"]["missing"] == ["counterparty.jurisdiction"], reason
    assert "counterparty.jurisdiction" in reason["message"] and "fail closed" in reason["message"]
    r = await client.post(f"{policies(org)}/explain", json=refund, headers=org.headers)
    assert r.status_code == 200, r.text
    ex = r.json()
    (rule,) = ex["matched_rules"]
    assert rule["id"] == "sanctioned" and rule["conditions_hold"] is True
    assert rule["missing"] == ["counterparty.jurisdiction"]
    assert ex["reasons"][0]["details"]["missing"] == ["counterparty.jurisdiction"]
    assert "counterparty.jurisdiction" in ex["trace"][2]["detail"]
    # With the jurisdiction sent, the same rule does not apply and nothing is missing.
    ok = await client.post(f"{policies(org)}/explain", json={**refund, "counterparty": {"jurisdiction": "DE"}},
                           headers=org.headers)
    assert ok.json()["decision"] == "allow"
    assert ok.json()["matched_rules"][0]["missing"] == [] and ok.json()["matched_rules"][0]["conditions_hold"] is False


async def test_escalations_and_narrowing_name_the_missing_field_too(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["payments:*"])
    await add_rule(client, org, {"id": "big", "subject": "*", "capability": "payments:send", "effect": "escalate",
                                 "conditions": {"amount_above": 1000, "currency": ["EUR"]}})
    await add_rule(client, org, {"id": "small-refunds", "subject": "*", "capability": "payments:refund",
                                 "effect": "allow", "conditions": {"amount_below": 500}})
    key = await make_key(client, org, "agent")
    out = await decide(client, key, action(tool="payments", type="send"), EVAL)
    assert out["decision"] == "escalate"
    assert out["reasons"][0]["details"]["missing"] == ["action.amount", "action.currency"], out["reasons"]
    out = await decide(client, key, action(tool="payments", type="refund"), EVAL)
    assert out["reasons"][0]["code"] == "policy_conditions_not_met"
    assert out["reasons"][0]["details"]["missing"] == ["action.amount"]
    # an amount that is simply too large is not "missing"
    out = await decide(client, key, action(tool="payments", type="refund", amount=900), EVAL)
    assert out["reasons"][0]["code"] == "policy_conditions_not_met" and "missing" not in out["reasons"][0]["details"]
