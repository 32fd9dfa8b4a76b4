"""Gateway decisions: every evaluate/execute, every outcome, makes exactly one audit event;
the Redis round trips per decision do not grow; a SIGKILLed server loses nothing."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_key
from tests.gateway.factories import action, add_manifest
from tests.timing import eventually_sync


async def _events(client: Any, org: Any) -> list[dict[str, Any]]:
    await client.app.state.audit.flush()
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/events", params={"limit": 100, "offset": offset},
                             headers=org.headers)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        out += items
        if len(items) < 100:
            return [e for e in out if e["kind"].startswith("gateway.")]
        offset += 100


async def test_every_decision_makes_exactly_one_event(client: Any, org: Any) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "support-bot", approved=["email:send", "crm:read", "stripe:refund"],
                       require_human_approval=["stripe:refund"], max_per_hour=3, max_per_day=100)
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    calls = [
        ("evaluate", action(), "allow", "all_checks_passed"),
        ("execute", action(), "allow", "all_checks_passed"),
        ("execute", action(tool="payments", type="wire"), "deny", "capability_not_granted"),
        ("execute", action(tool="stripe", type="refund", amount=10, currency="EUR"), "escalate", "requires_human_approval"),
        ("evaluate", action(uapk_id="ghost"), "deny", "manifest_not_found"),
        ("execute", action(tool="crm", type="read"), "allow", "all_checks_passed"),
        ("execute", action(tool="crm", type="read"), "allow", "all_checks_passed"),
        ("execute", action(tool="crm", type="read"), "deny", "hourly_budget_exceeded"),
        ("evaluate", action(tool="crm", type="read"), "deny", "hourly_budget_exceeded"),
    ]
    answers = []
    for i, (endpoint, body, want, code) in enumerate(calls):
        r = await client.post(f"/api/v1/gateway/{endpoint}", json=body,
                              headers={**agent, "X-Request-ID": f"audit-test-{i}"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["decision"], got["reasons"][0]["code"]) == (want, code), got
        answers.append((endpoint, got))
    events = await _events(client, org)
    assert len(events) == len(calls)
    by_request = {e["request_id"]: e for e in events}
    assert len(by_request) == len(calls)
    key_id = None
    for i, (endpoint, got) in enumerate(answers):
        e = by_request[f"audit-test-{i}"]
        assert e["kind"] == f"gateway.{endpoint}"
        assert e["decision"] == got["decision"]
        assert e["reasons"][0]["code"] == got["reasons"][0]["code"]
        assert e["interaction_id"] == got["interaction_id"]
        assert e["policy_version"] == got["policy_version"]
        assert e["uapk_id"] == calls[i][1]["uapk_id"] and e["agent_id"] == "agent-1"
        assert e["params_hash"].startswith("sha256:") and e["params"] is None
        assert e["actor"].startswith("api_key:")
        key_id = key_id or e["actor"]
        assert e["actor"] == key_id
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/verify", headers=org.headers)
    assert r.json()["valid"] is True


async def test_concurrent_decisions_one_chain(client: Any, org: Any) -> None:
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "support-bot", max_per_hour=10_000, max_per_day=10_000)
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    rs = await asyncio.gather(*(client.post("/api/v1/gateway/execute", json=action(), headers=agent) for _ in range(200)))
    assert all(r.status_code == 200 and r.json()["decision"] == "allow" for r in rs)
    events = await _events(client, org)
    assert sorted(e["interaction_id"] for e in events) == sorted(r.json()["interaction_id"] for r in rs)
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/verify", headers=org.headers)
    assert r.json()["valid"] is True


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_redis_round_trips_per_decision_do_not_grow(backend: str, client: Any, org: Any) -> None:
    """An execute that reaches the quota step makes one Redis round trip (the quota script,
    which also XADDs the audit event) — with the audit trail on."""
    runtime = client.app.state.runtime
    sink = client.app.state.audit
    await add_manifest(runtime, org.org_id, "support-bot", max_per_hour=100, max_per_day=100)
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    r = await client.post("/api/v1/gateway/execute", json=action(), headers=agent)  # warm caches
    assert r.status_code == 200
    commands: list[str] = []

    def counting(redis: Any) -> Any:
        original = redis.execute_command

        async def wrapper(*args: Any, **kw: Any) -> Any:
            commands.append(str(args[0]))
            return await original(*args, **kw)

        redis.execute_command = wrapper
        return original

    originals = [(x, counting(x)) for x in {id(runtime.redis): runtime.redis, id(sink._writer_redis): sink._writer_redis}.values()]
    try:
        for _ in range(3):
            r = await client.post("/api/v1/gateway/execute", json=action(), headers=agent)
            assert r.json()["decision"] == "allow"
    finally:
        for redis, original in originals:
            redis.execute_command = original
    assert len(commands) == 3, commands
    assert all(c.upper() in {"EVALSHA", "EVAL"} for c in commands), commands
    events = await _events(client, org)
    assert len(events) == 4


@pytest.mark.parametrize("backend", ["postgres"])  # one backend is what this tests
async def test_sigkill_right_after_answering_loses_no_event(backend: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """A real ``bastion serve`` killed with SIGKILL just after answering: every answered
    decision is in the audit trail after a restart, exactly once."""
    from tests.faults.helpers import action_body, setup_agent
    from tests.faults.procs import BastionServer

    server = BastionServer(tmp_path / "srv", database_url=pg_url, redis_url=redis_url)
    server.start()
    try:
        agent = setup_agent(server, "kill-bot")
        answered = []
        with server.client(agent["agent_key"]) as c:
            for _ in range(20):
                r = c.post("/api/v1/gateway/execute", json=action_body("kill-bot"))
                assert r.status_code == 200, r.text
                answered.append(r.json()["interaction_id"])
        server.kill()
        server.start()  # the new writer takes over what the dead one left in the stream
        with server.client(server.owner_key) as owner:
            base = f"/api/v1/orgs/{server.org_id}/audit"
            items: list[dict[str, Any]] = []

            def all_written() -> bool:
                items[:] = owner.get(f"{base}/events", params={"kind": "gateway.execute", "limit": 100}).json()["items"]
                return len(items) >= len(answered)

            eventually_sync(all_written, 10.0, interval=0.05)
            assert sorted(e["interaction_id"] for e in items) == sorted(answered)
            assert owner.get(f"{base}/verify").json()["valid"] is True
    finally:
        server.close()


async def test_no_answer_without_its_event(client: Any, org: Any) -> None:
    """Fail closed: when the event cannot be handed over, the gateway answers 503, never allow."""
    runtime = client.app.state.runtime
    await add_manifest(runtime, org.org_id, "support-bot", max_per_hour=100, max_per_day=100)
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    sink = client.app.state.audit
    if sink.redis_mode:
        # The quota script's XADD fails (wrong type at the stream key): the whole step fails.
        await runtime.redis.delete("bastion:audit:events")
        await runtime.redis.set("bastion:audit:events", "not a stream")
        try:
            r = await client.post("/api/v1/gateway/execute", json=action(), headers={**agent, "X-Request-ID": "refused"})
            assert r.status_code == 503, r.text
        finally:
            await runtime.redis.delete("bastion:audit:events")
            sink._prepared = False
    else:
        sink._accepting = False
        try:
            for path in ("execute", "evaluate"):
                r = await client.post(f"/api/v1/gateway/{path}", json=action(), headers=agent)
                assert r.status_code == 503, r.text
        finally:
            sink._accepting = True
    # Once events can be handed over again, decisions resume, each with its event; the refused
    # one left none.
    r = await client.post("/api/v1/gateway/execute", json=action(), headers={**agent, "X-Request-ID": "after"})
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    events = await _events(client, org)
    assert [e["request_id"] for e in events] == ["after"]


# --- one decision, one event: the same in both modes -------------------------------------------
_VOLATILE = {"seq", "event_id", "org_id", "actor", "created_at", "interaction_id", "hash", "prev_hash"}


async def _decisions_and_events(settings: Any) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """The same calls on a fresh app: every outcome (allow, allow by override, escalate, deny
    by a check, by each quota window and by a spent override token), then the audited events."""
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    async with serve_app(create_app(settings)) as client:
        org = await bootstrap_org(client.app)
        runtime = client.app.state.runtime
        await add_manifest(runtime, org.org_id, "support-bot", approved=["email:send", "crm:read", "stripe:refund"],
                           require_human_approval=["stripe:refund"], max_per_hour=3, max_per_day=100)
        await add_manifest(runtime, org.org_id, "daily-bot", approved=["email:send"], max_per_hour=10, max_per_day=1)
        agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot", "daily-bot"])}
        refund = action(tool="stripe", type="refund", amount=10, currency="EUR", params={"charge": "ch_1"})
        answers: list[tuple[str, dict[str, Any]]] = []

        async def call(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            n = len(answers)
            r = await client.post(f"/api/v1/gateway/{endpoint}", json=body,
                                  headers={**agent, "X-Request-ID": f"same-{n:02d}"})
            assert r.status_code == 200, r.text
            answers.append((endpoint, r.json()))
            return r.json()  # type: ignore[no-any-return]

        await call("execute", action())  # allow (1 of 3 this hour)
        await call("evaluate", action())  # allow, nothing spent
        await call("execute", action(tool="payments", type="wire"))  # deny: capability_not_granted
        await call("evaluate", action(uapk_id="ghost"))  # deny: manifest_not_found
        escalated = await call("execute", refund)  # escalate: an approval waits
        await call("evaluate", refund)  # escalate (evaluate: no approval)
        r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{escalated['approval_id']}/approve",
                              json={"notes": "ok"}, headers=org.headers)
        assert r.status_code == 200, r.text
        with_token = {**refund, "override_token": r.json()["override_token"]}
        await call("evaluate", with_token)  # allow by the override token (not consumed)
        await call("execute", with_token)  # allow: override_token_accepted (2 of 3)
        # Forget the spent token in this process: the quota step's single-use marker refuses it.
        client.app.state.gateway.used_overrides._ids.clear()
        await call("execute", with_token)  # deny: override_token_already_used (quota status 3)
        await call("execute", action(tool="crm", type="read"))  # allow (3 of 3)
        await call("execute", action())  # deny: hourly_budget_exceeded (quota status 1)
        await call("evaluate", action())  # deny: hourly_budget_exceeded, read only
        await call("execute", action(uapk_id="daily-bot"))  # allow (1 of 1 today)
        await call("execute", action(uapk_id="daily-bot"))  # deny: budget_exceeded (quota status 2)
        await call("evaluate", action(uapk_id="daily-bot"))  # deny: budget_exceeded, read only
        events = await _events(client, org)
    return answers, events


def _comparable(e: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """An event without what differs between two runs by construction (ids, times, the key);
    approval ids become their order of appearance."""
    out = {k: v for k, v in e.items() if k not in _VOLATILE}

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (ids.setdefault(v, f"<approval {len(ids)}>") if k in ("approval_id", "override_approval_id")
                        and isinstance(v, str) else rename(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [rename(v) for v in value]
        return value

    return rename(out)  # type: ignore[no-any-return]


async def test_the_audited_event_is_the_same_in_redis_and_embedded_mode(
    sqlite_url: str, pg_url: str, redis_url: str, tmp_path: Path,
) -> None:
    """Regression (issue 12): a quota denial's audited details were {capability, limit,
    remaining, window} with Redis (rewritten by the audit writer from the script's status) and
    {limit, remaining, reset_at, retry_after, window} embedded. Now every event is built from the
    settled decision: field by field the same in both modes, and the same as the answer."""
    from core.settings import load_settings

    runs = {}
    for mode, db, redis in (("embedded", sqlite_url, None), ("redis", pg_url, redis_url)):
        settings = load_settings(env={}, database_url=db, redis_url=redis, data_dir=tmp_path / mode,
                                 redis_timeout_ms=2000)
        runs[mode] = await _decisions_and_events(settings)
    codes = [(endpoint, got["decision"], got["reasons"][0]["code"]) for endpoint, got in runs["embedded"][0]]
    assert codes == [(endpoint, got["decision"], got["reasons"][0]["code"]) for endpoint, got in runs["redis"][0]]
    assert {c for _, _, c in codes} >= {"all_checks_passed", "override_token_accepted", "requires_human_approval",
                                        "capability_not_granted", "manifest_not_found", "override_token_already_used",
                                        "hourly_budget_exceeded", "budget_exceeded"}
    compared = {}
    for mode, (answers, events) in runs.items():
        by_request = {e["request_id"]: e for e in events}
        assert sorted(by_request) == [f"same-{n:02d}" for n in range(len(answers))]
        for n, (endpoint, got) in enumerate(answers):  # the event says what the answer said
            e = by_request[f"same-{n:02d}"]
            assert (e["kind"], e["decision"], e["reasons"]) == (f"gateway.{endpoint}", got["decision"], got["reasons"])
        ids: dict[str, str] = {}
        compared[mode] = [_comparable(by_request[f"same-{n:02d}"], ids) for n in range(len(answers))]
    for n, (embedded, redis) in enumerate(zip(compared["embedded"], compared["redis"])):
        assert embedded == redis, (n, embedded, redis)
