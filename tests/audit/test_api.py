"""The audit API: list/filter/paginate, read one, verify, export; roles; org isolation."""
from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from audit.event import build_event
from audit.export import verify_export
from tests.conftest import assert_error, make_key


async def _record(client: Any, org_id: str, n: int, **kw: Any) -> list[dict[str, Any]]:
    sink = client.app.state.audit
    sent = []
    for i in range(n):
        values: dict[str, Any] = dict(org_id=org_id, kind="gateway.execute", actor="api_key:k", uapk_id="bot",
                                      agent_id="a1", capability="crm:read", decision="allow", request_id=f"r{i}")
        values.update(kw)
        e = build_event(**values)
        await sink.record(e)
        sent.append(e)
    await sink.flush()
    return sent


async def test_list_filter_get_and_paginate(client: Any, org: Any) -> None:
    await _record(client, org.org_id, 3)
    await _record(client, org.org_id, 2, decision="deny", uapk_id="other")
    base = f"/api/v1/orgs/{org.org_id}/audit/events"
    r = await client.get(base, headers=org.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    ours = [e for e in body["items"] if e["kind"] == "gateway.execute"]
    assert len(ours) == 5
    assert [e["seq"] for e in body["items"]] == sorted((e["seq"] for e in body["items"]), reverse=True)
    r = await client.get(base, params={"decision": "deny"}, headers=org.headers)
    assert {e["uapk_id"] for e in r.json()["items"]} == {"other"} and r.json()["total"] == 2
    r = await client.get(base, params={"uapk_id": "bot", "kind": "gateway.execute", "limit": 2}, headers=org.headers)
    assert r.json()["total"] == 3 and len(r.json()["items"]) == 2
    one = r.json()["items"][0]
    r = await client.get(f"{base}/{one['event_id']}", headers=org.headers)
    assert r.status_code == 200 and r.json() == one
    assert_error(await client.get(f"{base}/nope", headers=org.headers), 404, "NOT_FOUND")
    assert_error(await client.get(base, params={"from": "yesterday"}, headers=org.headers), 400, "VALIDATION_ERROR")
    assert_error(await client.get(base, params={"decision": "maybe"}, headers=org.headers), 400, "VALIDATION_ERROR")
    assert_error(await client.get(base, params={"limit": "0"}, headers=org.headers), 400, "VALIDATION_ERROR")
    assert_error(await client.get(base, params={"from": "2030-01-01T00:00:00Z", "to": "2020-01-01T00:00:00Z"},
                                  headers=org.headers), 400, "VALIDATION_ERROR")


async def test_time_window_filter(client: Any, org: Any) -> None:
    from datetime import datetime

    old = datetime(2020, 1, 1, tzinfo=UTC)
    await _record(client, org.org_id, 1, created_at=old, request_id="old")
    await _record(client, org.org_id, 1, request_id="new")
    base = f"/api/v1/orgs/{org.org_id}/audit/events"
    r = await client.get(base, params={"to": "2020-06-01T00:00:00+00:00"}, headers=org.headers)
    assert [e["request_id"] for e in r.json()["items"]] == ["old"]
    r = await client.get(base, params={"from": "2021-01-01T00:00:00Z", "kind": "gateway.execute"}, headers=org.headers)
    assert [e["request_id"] for e in r.json()["items"]] == ["new"]


async def test_verify_endpoint(client: Any, org: Any) -> None:
    await _record(client, org.org_id, 4)
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/verify", headers=org.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True and body["checked"] >= 4 and "problem" not in body


async def test_roles_and_isolation(client: Any, org: Any, other_org: Any) -> None:
    await _record(client, org.org_id, 1)
    viewer = await make_key(client, org, "viewer")
    agent = await make_key(client, org, "agent")
    base = f"/api/v1/orgs/{org.org_id}/audit"
    assert (await client.get(f"{base}/events", headers={"X-API-Key": viewer})).status_code == 200
    assert (await client.get(f"{base}/export", headers={"X-API-Key": viewer})).status_code == 200
    assert_error(await client.get(f"{base}/events", headers={"X-API-Key": agent}), 403, "PERMISSION_DENIED")
    assert_error(await client.get(f"{base}/events"), 401, "AUTHENTICATION_REQUIRED")
    assert_error(await client.get(f"{base}/events", headers=other_org.headers), 404, "NOT_FOUND")
    assert_error(await client.get(f"{base}/verify", headers=other_org.headers), 404, "NOT_FOUND")
    # Another org's events are not visible through its own id either.
    r = await client.get(f"/api/v1/orgs/{other_org.org_id}/audit/events", headers=other_org.headers)
    assert all(e["org_id"] == other_org.org_id for e in r.json()["items"])


async def test_export_is_jsonl_and_verifies(client: Any, org: Any) -> None:
    await _record(client, org.org_id, 7)
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/export", headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[0]["type"] == "header" and lines[-1]["type"] == "end"
    assert any(x["type"] == "checkpoint" for x in lines)
    events = [x for x in lines if x["type"] == "event"]
    assert [x["seq"] for x in events] == list(range(1, len(events) + 1))
    keys = client.app.state.runtime.keys
    result = verify_export(r.text.splitlines(), keys.public_key)
    assert result.valid, result
    assert result.checked == len(events)
