"""The gateway endpoints over HTTP, on both backends (SQLite + in-process, PostgreSQL + Redis)."""
from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlalchemy import event, select

from store.models import Approval
from tests.conftest import Org, assert_error, make_key
from tests.gateway.factories import action, add_manifest, set_status

EVAL = "/api/v1/gateway/evaluate"
EXEC = "/api/v1/gateway/execute"


def rt(client: Any) -> Any:
    return client.app.state.runtime


async def decide(client: Any, key: str, body: dict[str, Any], path: str = EXEC) -> dict[str, Any]:
    r = await client.post(path, json=body, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def agent_key(client: Any, org: Org, uapk_ids: list[str] | None = None) -> str:
    return await make_key(client, org, "agent", uapk_ids)


# --- the response shape ----------------------------------------------------------------------
async def test_allow_response_shape(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot")
    key = await agent_key(client, org)
    out = await decide(client, key, action())
    assert out["decision"] == "allow"
    assert [r["code"] for r in out["reasons"]] == ["all_checks_passed"]
    assert out["approval_id"] is None and out["executed"] is False and out["result"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", out["timestamp"])
    assert re.fullmatch(r"[0-9a-f-]{36}", out["interaction_id"])
    assert isinstance(out["policy_version"], str) and out["policy_version"]
    ev = await decide(client, key, action(), EVAL)
    assert ev["decision"] == "allow"
    assert [s["check"] for s in ev["trace"]] == ["manifest", "capability_token", "capability", "human_approval", "quota"]
    assert [s["result"] for s in ev["trace"]] == ["pass", "skip", "pass", "pass", "pass"]
    assert ev["trace"][2]["rule"] == "allow:email:send"
    assert "executed" not in ev


async def test_sdk_style_body_with_counterparty_and_context(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot")
    key = await agent_key(client, org)
    body = action(params={"to": "a@b.c", "nested": {"any": [1, 2]}}, amount=12.5, currency="EUR", description="d")
    body["counterparty"] = {"email": "a@b.c", "jurisdiction": "DE"}
    body["context"] = {"anything": {"goes": True}}
    body["capability_token"] = None
    out = await decide(client, key, body)
    assert out["decision"] == "allow"


# --- every reason code ---------------------------------------------------------------------
async def test_manifest_not_found_and_not_active(client: Any, org: Org) -> None:
    key = await agent_key(client, org)
    out = await decide(client, key, action("ghost"))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "manifest_not_found"
    for status in ("pending", "suspended", "rejected", "revoked", "superseded"):
        await add_manifest(rt(client), org.org_id, f"bot-{status}", status=status)
        out = await decide(client, key, action(f"bot-{status}"))
        assert out["decision"] == "deny", status
        assert out["reasons"][0]["code"] == "manifest_not_active", status
        assert out["reasons"][0]["details"]["status"] == status
    ev = await decide(client, key, action("bot-pending"), EVAL)
    assert [s["result"] for s in ev["trace"]] == ["fail", "skip", "skip", "skip", "skip"]


async def test_capability_not_granted_and_wildcards(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*", "*:read", "email:send"])
    key = await agent_key(client, org)
    cases = {
        ("crm", "read"): "allow",
        ("crm", "delete"): "allow",
        ("crmx", "read"): "allow",  # through *:read
        ("crmx", "write"): "deny",
        ("email", "read"): "allow",
        ("email", "send"): "allow",
        ("email", "sendx"): "deny",
        ("emai", "send"): "deny",
        ("cr", "delete"): "deny",
    }
    for (tool, typ), expected in cases.items():
        out = await decide(client, key, action(tool=tool, type=typ), EVAL)
        assert out["decision"] == expected, (tool, typ, out)
        if expected == "deny":
            assert out["reasons"][0]["code"] == "capability_not_granted"
            assert out["reasons"][0]["details"]["capability"] == f"{tool}:{typ}"
    ev = await decide(client, key, action(tool="crm", type="delete"), EVAL)
    assert ev["trace"][2]["rule"] == "allow:crm:*"
    # action.capability, when sent, must be tool:type (it is what the action does)
    out = await decide(client, key, action(tool="crm", type="update", capability="crm:update"), EVAL)
    assert out["decision"] == "allow"
    r = await client.post(EVAL, json=action(tool="whatever", type="x", capability="crm:update"),
                          headers={"X-API-Key": key})
    assert r.status_code == 400 and [d["field"] for d in r.json()["details"]] == ["action.capability"]


async def test_crm_star_does_not_grant_other_resources(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*"])
    key = await agent_key(client, org)
    for cap, expected in {"crm:read": "allow", "crm:delete": "allow", "crmx:read": "deny", "xcrm:read": "deny"}.items():
        tool, typ = cap.split(":")
        assert (await decide(client, key, action(tool=tool, type=typ), EVAL))["decision"] == expected, cap


async def test_requires_human_approval_escalates_and_creates_approval(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*"], require_human_approval=["crm:delete"])
    key = await agent_key(client, org)
    ev = await decide(client, key, action(tool="crm", type="delete"), EVAL)
    assert ev["decision"] == "escalate" and ev["approval_id"] is None
    assert ev["reasons"][0]["code"] == "requires_human_approval"
    assert ev["trace"][3] == {"check": "human_approval", "result": "escalate",
                              "detail": "a human must approve this action",
                              "rule": "require_human_approval:crm:delete"}
    async with rt(client).sessions() as s:
        assert (await s.execute(select(Approval))).scalars().all() == []  # evaluate creates none
    out = await decide(client, key, action(tool="crm", type="delete", params={"id": 7}))
    assert out["decision"] == "escalate" and out["approval_id"]
    async with rt(client).sessions() as s:
        row = (await s.execute(select(Approval))).scalar_one()
    assert row.id == out["approval_id"] and row.capability == "crm:delete" and row.uapk_id == "support-bot"
    assert row.action["params"] == {"id": 7} and row.interaction_id == out["interaction_id"]
    # non-matching capability is not escalated
    assert (await decide(client, key, action(tool="crm", type="read")))["decision"] == "allow"


async def test_wildcard_human_approval(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["*:*"], require_human_approval=["*:delete"])
    key = await agent_key(client, org)
    assert (await decide(client, key, action(tool="files", type="delete"), EVAL))["decision"] == "escalate"
    assert (await decide(client, key, action(tool="files", type="read"), EVAL))["decision"] == "allow"


async def test_hourly_and_daily_budget(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "hourly", max_per_hour=2, max_per_day=10)
    await add_manifest(rt(client), org.org_id, "daily", max_per_hour=10, max_per_day=2)
    key = await agent_key(client, org)
    for uapk, code, limit in (("hourly", "hourly_budget_exceeded", 2), ("daily", "budget_exceeded", 2)):
        for _ in range(limit):
            assert (await decide(client, key, action(uapk)))["decision"] == "allow"
        out = await decide(client, key, action(uapk))
        assert out["decision"] == "deny" and out["reasons"][0]["code"] == code
        d = out["reasons"][0]["details"]
        assert d["limit"] == 2 and d["remaining"] == 0 and d["retry_after"] >= 1
        assert d["reset_at"].endswith("Z")
        ev = await decide(client, key, action(uapk), EVAL)
        assert ev["decision"] == "deny" and ev["reasons"][0]["code"] == code


async def test_evaluate_spends_nothing(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", max_per_hour=2)
    key = await agent_key(client, org)
    for _ in range(10):
        assert (await decide(client, key, action(), EVAL))["decision"] == "allow"
    assert (await decide(client, key, action()))["decision"] == "allow"
    assert (await decide(client, key, action()))["decision"] == "allow"
    assert (await decide(client, key, action()))["decision"] == "deny"


async def test_escalate_and_deny_spend_nothing(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", approved=["crm:*"], require_human_approval=["crm:delete"],
                       max_per_hour=1)
    key = await agent_key(client, org)
    for _ in range(3):
        assert (await decide(client, key, action(tool="crm", type="delete")))["decision"] == "escalate"
        assert (await decide(client, key, action(tool="mail", type="x")))["decision"] == "deny"
    assert (await decide(client, key, action(tool="crm", type="read")))["decision"] == "allow"
    # deny beats escalate: the exhausted budget denies the escalation too
    out = await decide(client, key, action(tool="crm", type="delete"))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "hourly_budget_exceeded"
    assert out["approval_id"] is None


async def test_ratelimit_headers(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", max_per_hour=3, max_per_day=500)
    key = await agent_key(client, org)
    r = await client.post(EXEC, json=action(), headers={"X-API-Key": key})
    assert r.headers["ratelimit-policy"] == '"hour";q=3;w=3600, "day";q=500;w=86400'
    m = re.fullmatch(r'"hour";r=2;t=(\d+)', r.headers["ratelimit"])
    assert m and 1 <= int(m.group(1)) <= 3600
    r = await client.post(EVAL, json=action(), headers={"X-API-Key": key})
    assert re.fullmatch(r'"hour";r=2;t=\d+', r.headers["ratelimit"])
    await client.post(EXEC, json=action(), headers={"X-API-Key": key})
    await client.post(EXEC, json=action(), headers={"X-API-Key": key})
    r = await client.post(EXEC, json=action(), headers={"X-API-Key": key})
    assert r.json()["decision"] == "deny"
    assert re.fullmatch(r'"hour";r=0;t=\d+', r.headers["ratelimit"])
    # the daily window binds when it has fewer left
    await add_manifest(rt(client), org.org_id, "daily-bot", max_per_hour=100, max_per_day=5)
    r = await client.post(EXEC, json=action("daily-bot"), headers={"X-API-Key": key})
    assert re.fullmatch(r'"day";r=4;t=\d+', r.headers["ratelimit"])
    # no manifest: no quota to report
    r = await client.post(EXEC, json=action("ghost"), headers={"X-API-Key": key})
    assert "ratelimit" not in r.headers


async def test_defaults_when_manifest_has_no_quota(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    app = create_app(settings_factory(default_max_actions_per_hour=2, default_max_actions_per_day=7))
    async with serve_app(app) as client:
        org = await bootstrap_org(app)
        await add_manifest(rt(client), org.org_id, "support-bot")
        key = await agent_key(client, org)
        r = await client.post(EXEC, json=action(), headers={"X-API-Key": key})
        assert r.headers["ratelimit-policy"] == '"hour";q=2;w=3600, "day";q=7;w=86400'
        await decide(client, key, action())
        out = await decide(client, key, action())
        assert out["reasons"][0]["code"] == "hourly_budget_exceeded"


# --- credentials, roles, restrictions ----------------------------------------------------------
async def test_401_400_403_bodies(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot")
    for path in (EVAL, EXEC):
        assert_error(await client.post(path, json=action()), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await client.post(path, content=b"{not json"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await client.post(path, json=action(), headers={"X-API-Key": "bst_nope"}), 401,
                     "AUTHENTICATION_REQUIRED")
        login = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert_error(await client.post(path, json=action(), headers=bearer), 401, "AUTHENTICATION_REQUIRED")
    key = await agent_key(client, org)
    h = {"X-API-Key": key}
    body = assert_error(await client.post(EXEC, content=b"{not json", headers={**h, "Content-Type": "application/json"}),
                        400, "VALIDATION_ERROR")
    assert body["details"] == [{"field": "body", "issue": "Body is not valid JSON."}]
    # The same bytes without a JSON media type: 415 (the type is checked before the body is read).
    assert_error(await client.post(EXEC, content=b"{not json", headers=h), 415, "UNSUPPORTED_MEDIA_TYPE")
    bad = action()
    bad["surprise"] = 1
    body = assert_error(await client.post(EXEC, json=bad, headers=h), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "surprise"
    bad = action()
    del bad["action"]["tool"]
    body = assert_error(await client.post(EXEC, json=bad, headers=h), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "action.tool"
    body = assert_error(await client.post(EXEC, json=action(tool="Email"), headers=h), 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["action.tool"]
    body = assert_error(await client.post(EXEC, json=action(type="se nd"), headers=h), 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["action.type"]
    body = assert_error(await client.post(EXEC, json=action(capability="crm:*"), headers=h), 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["action.capability"]
    body = assert_error(await client.post(EVAL, json={**action(), "uapk_id": 5}, headers=h), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "uapk_id"
    # params and context accept any keys
    assert (await decide(client, key, action(params={"x-y": {"z": None}}, context={"k": [1]})))["decision"] == "allow"
    for role in ("viewer", "approver", "policy_author"):
        other = await make_key(client, org, role, name=f"{role}-gw")
        assert_error(await client.post(EXEC, json=action(), headers={"X-API-Key": other}), 403, "PERMISSION_DENIED")
    for role in ("admin", "owner"):
        k = org.owner_key if role == "owner" else await make_key(client, org, role, name="admin-gw")
        assert (await decide(client, k, action()))["decision"] == "allow"


async def test_body_cap(client: Any, org: Org) -> None:
    key = await agent_key(client, org)
    body = action(params={"blob": "x" * (65 * 1024)})
    r = await client.post(EXEC, json=body, headers={"X-API-Key": key})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


async def test_restricted_agent_key(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot")
    await add_manifest(rt(client), org.org_id, "billing-bot")
    key = await agent_key(client, org, ["support-bot"])
    assert (await decide(client, key, action("support-bot")))["decision"] == "allow"
    for path in (EVAL, EXEC):
        out = await decide(client, key, action("billing-bot"), path)
        assert out["decision"] == "deny"
        assert out["reasons"][0]["code"] == "manifest_not_found"
        ghost = await decide(client, key, action("no-such-bot"), path)
        assert out["reasons"][0]["message"].replace("billing-bot", "X") == ghost["reasons"][0]["message"].replace(
            "no-such-bot", "X")


async def test_tenant_isolation(client: Any, org: Org, other_org: Org) -> None:
    await add_manifest(rt(client), other_org.org_id, "globex-bot")
    key = await agent_key(client, org)
    out = await decide(client, key, action("globex-bot"))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "manifest_not_found"
    other_key = await agent_key(client, other_org)
    assert (await decide(client, other_key, action("globex-bot")))["decision"] == "allow"
    # same uapk_id in both orgs: separate quotas
    await add_manifest(rt(client), org.org_id, "globex-bot", max_per_hour=1)
    assert (await decide(client, key, action("globex-bot")))["decision"] == "allow"
    assert (await decide(client, key, action("globex-bot")))["decision"] == "deny"
    assert (await decide(client, other_key, action("globex-bot")))["decision"] == "allow"


# --- hot path ------------------------------------------------------------------------------
async def test_warm_decisions_run_no_sql(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot")
    key = await agent_key(client, org)
    assert (await decide(client, key, action()))["decision"] == "allow"  # warm up (key + org)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = rt(client).engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for path in (EVAL, EXEC, EVAL, EXEC):
            assert (await decide(client, key, action(), path))["decision"] == "allow"
        out = await decide(client, key, action(tool="nope", type="x"))
        assert out["decision"] == "deny"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []


async def test_warm_decision_never_calls_casbin(client: Any, org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    import casbin

    await add_manifest(rt(client), org.org_id, "support-bot")
    key = await agent_key(client, org)
    await decide(client, key, action())

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("enforce on the hot path")

    monkeypatch.setattr(casbin.Enforcer, "enforce", boom)
    monkeypatch.setattr(casbin.Enforcer, "enforce_ex", boom)
    assert (await decide(client, key, action()))["decision"] == "allow"


# --- freshness -----------------------------------------------------------------------------
async def test_transitions_change_decisions_at_once(client: Any, org: Org) -> None:
    runtime = rt(client)
    mid = await add_manifest(runtime, org.org_id, "support-bot", status="pending")
    key = await agent_key(client, org)
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "manifest_not_active"
    v1 = (await decide(client, key, action(), EVAL))["policy_version"]
    await set_status(runtime, org.org_id, mid, "active", approved=["email:send"])
    out = await decide(client, key, action())
    assert out["decision"] == "allow" and out["policy_version"] != v1
    await set_status(runtime, org.org_id, mid, "suspended")
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "manifest_not_active"
    await set_status(runtime, org.org_id, mid, "active")
    assert (await decide(client, key, action()))["decision"] == "allow"
    await set_status(runtime, org.org_id, mid, "revoked")
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "manifest_not_active"


async def test_superseding_switches_to_the_new_version(client: Any, org: Org) -> None:
    runtime = rt(client)
    old = await add_manifest(runtime, org.org_id, "support-bot", approved=["email:send"], age_seconds=60)
    key = await agent_key(client, org)
    assert (await decide(client, key, action()))["decision"] == "allow"
    new = await add_manifest(runtime, org.org_id, "support-bot", approved=["crm:read"], status="pending", version="2.0.0")
    assert (await decide(client, key, action()))["decision"] == "allow"  # old still active
    await set_status(runtime, org.org_id, old, "superseded", notify=False)
    await set_status(runtime, org.org_id, new, "active", approved=["crm:read"])
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "capability_not_granted"
    assert (await decide(client, key, action(tool="crm", type="read")))["decision"] == "allow"


async def test_missed_message_caught_up_by_version_poll(client: Any, org: Org) -> None:
    runtime = rt(client)
    mid = await add_manifest(runtime, org.org_id, "support-bot")
    key = await agent_key(client, org)
    assert (await decide(client, key, action()))["decision"] == "allow"
    await set_status(runtime, org.org_id, mid, "suspended", notify=False)  # no announcement
    assert (await decide(client, key, action()))["decision"] == "allow"  # still the cached state
    stale = await client.app.state.gateway.state.poll_once()
    assert stale == [org.org_id]
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "manifest_not_active"


async def test_concurrent_executes_via_http_admit_exactly_the_limit(client: Any, org: Org) -> None:
    await add_manifest(rt(client), org.org_id, "support-bot", max_per_hour=25, max_per_day=1000)
    key = await agent_key(client, org)
    h = {"X-API-Key": key}

    async def one() -> str:
        r = await client.post(EXEC, json=action(), headers=h)
        return r.json()["decision"]  # type: ignore[no-any-return]

    results: list[str] = []
    for _ in range(4):
        results += await asyncio.gather(*(one() for _ in range(50)))
    assert results.count("allow") == 25 and results.count("deny") == 175


# --- capability tokens (issued by the capability-token endpoints, checked here) ---------------
async def _cap_token(client: Any, key: str, caps: list[str], **kw: Any) -> dict[str, Any]:
    body = {"uapk_id": "support-bot", "agent_id": "agent-1", "capabilities": caps, **kw}
    r = await client.post("/api/v1/gateway/tokens", json=body, headers={"X-API-Key": key})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_capability_token_narrows_and_is_checked(client: Any, org: Org) -> None:
    runtime = rt(client)
    mid = await add_manifest(runtime, org.org_id, "support-bot", approved=["crm:*", "email:send"])
    key = await agent_key(client, org)
    tok = (await _cap_token(client, key, ["crm:read"]))["token"]
    out = await decide(client, key, action(tool="crm", type="read", capability_token=tok), EVAL)
    assert out["decision"] == "allow"
    assert out["trace"][1] == {"check": "capability_token", "result": "pass",
                               "detail": "token valid and includes the capability"}
    out = await decide(client, key, action(tool="crm", type="delete", capability_token=tok))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "capability_not_in_token"
    other = await decide(client, key, {**action(tool="crm", type="read", capability_token=tok), "agent_id": "x"})
    assert other["reasons"][0]["code"] == "token_agent_mismatch"
    bad = await decide(client, key, action(tool="crm", type="read", capability_token=tok[:-4] + "AAAA"))
    assert bad["reasons"][0]["code"] == "capability_token_invalid"
    # the token dies with its manifest version
    await set_status(runtime, org.org_id, mid, "suspended")
    out = await decide(client, key, action(tool="crm", type="read", capability_token=tok))
    assert out["reasons"][0]["code"] == "manifest_not_active"


async def test_require_capability_token(client: Any, org: Org) -> None:
    from sqlalchemy import update

    from store.models import Manifest

    runtime = rt(client)
    mid = await add_manifest(runtime, org.org_id, "support-bot", approved=["crm:*"])
    async with runtime.sessions() as s, s.begin():
        m = await s.get(Manifest, mid)
        doc = dict(m.document)
        doc["constraints"] = {**doc["constraints"], "require_capability_token": True}
        await s.execute(update(Manifest).where(Manifest.id == mid).values(document=doc))
    await set_status(runtime, org.org_id, mid, "active")
    key = await agent_key(client, org)
    out = await decide(client, key, action(tool="crm", type="read"))
    assert out["decision"] == "deny" and out["reasons"][0]["code"] == "capability_token_required"
    tok = (await _cap_token(client, key, ["crm:read"]))["token"]
    assert (await decide(client, key, action(tool="crm", type="read", capability_token=tok)))["decision"] == "allow"


# --- with the Manifests API -------------------------------------------------------------------
async def test_manifest_lifecycle_through_the_api_changes_decisions_at_once(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    h = org.headers

    def doc(version: str, requested: list[str]) -> dict[str, Any]:
        return {
            "version": "1.0",
            "agent": {"id": "support-bot", "name": "Support Bot", "version": version, "team": "support"},
            "capabilities": {"requested": requested},
            "constraints": {"max_actions_per_hour": 100, "max_actions_per_day": 500,
                            "require_human_approval": ["crm:delete"]},
        }

    key = await agent_key(client, org)
    r = await client.post(base, json=doc("1.0.0", ["email:send", "crm:*"]), headers=h)
    assert r.status_code == 201, r.text
    v1 = r.json()["manifest_id"]
    # warm the org while the manifest is pending
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "manifest_not_active"
    r = await client.post(f"{base}/{v1}/approve", json={"approved_capabilities": ["email:send", "crm:*"]}, headers=h)
    assert r.status_code == 200, r.text
    assert (await decide(client, key, action()))["decision"] == "allow"
    assert (await decide(client, key, action(tool="crm", type="delete"), EVAL))["decision"] == "escalate"
    assert (await client.post(f"{base}/{v1}/suspend", json={"reason": "x"}, headers=h)).status_code == 200
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "manifest_not_active"
    assert (await client.post(f"{base}/{v1}/reactivate", json={}, headers=h)).status_code == 200
    assert (await decide(client, key, action()))["decision"] == "allow"
    # a new version supersedes the old one once approved
    r = await client.post(base, json=doc("2.0.0", ["crm:read"]), headers=h)
    assert r.status_code == 201, r.text
    v2 = r.json()["manifest_id"]
    assert (await decide(client, key, action()))["decision"] == "allow"  # v1 still active
    assert (await client.post(f"{base}/{v2}/approve", json={}, headers=h)).status_code == 200
    assert (await decide(client, key, action()))["reasons"][0]["code"] == "capability_not_granted"
    assert (await decide(client, key, action(tool="crm", type="read")))["decision"] == "allow"
    assert (await client.post(f"{base}/{v2}/revoke", json={"reason": "gone"}, headers=h)).status_code == 200
    out = await decide(client, key, action(tool="crm", type="read"))
    assert out["reasons"][0]["code"] == "manifest_not_active"


async def test_optional_per_key_ceiling(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    app = create_app(settings_factory(gateway_key_per_minute=3))
    async with serve_app(app) as client:
        org = await bootstrap_org(app)
        await add_manifest(rt(client), org.org_id, "support-bot")
        key = await agent_key(client, org)
        other = await make_key(client, org, "agent", name="second-agent")
        for _ in range(3):
            assert (await decide(client, key, action(), EVAL))["decision"] == "allow"
        r = await client.post(EXEC, json=action(), headers={"X-API-Key": key})
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["retry-after"]) >= 1
        assert (await decide(client, other, action()))["decision"] == "allow"  # per key
