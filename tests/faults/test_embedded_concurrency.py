"""The embedded mode (SQLite, in-process counters, one process) under concurrent requests: the
quota still never over-admits, an override token is still spent once, an approval is still
decided once."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Org, make_key
from tests.faults.procs import sized
from tests.gateway.factories import action, add_manifest

EXECUTE = "/api/v1/gateway/execute"


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def test_embedded_quota_override_and_approval_races(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    limit = 50
    await add_manifest(runtime, org.org_id, "emb-bot", approved=["email:send", "stripe:refund"],
                       require_human_approval=["stripe:refund"], max_per_hour=limit, max_per_day=10 * limit)
    agent = {"X-API-Key": await make_key(client, org, "agent", ["emb-bot"])}
    approver = {"X-API-Key": await make_key(client, org, "approver")}

    n = sized(400, 4000)
    responses = await asyncio.gather(*(client.post(EXECUTE, json=action(uapk_id="emb-bot"), headers=agent)
                                       for _ in range(n)))
    assert Counter(r.json()["decision"] for r in responses) == Counter({"allow": limit, "deny": n - limit})

    # Approvals and override tokens on a fresh budget (the hour window above is spent).
    await add_manifest(runtime, org.org_id, "emb-bot-2", approved=["stripe:refund"],
                       require_human_approval=["stripe:refund"], max_per_hour=1000, max_per_day=1000)
    agent2 = {"X-API-Key": await make_key(client, org, "agent", ["emb-bot-2"])}
    body = action(uapk_id="emb-bot-2", tool="stripe", type="refund", amount=5.0, currency="EUR")
    ids = []
    # Two different actions (a repeat of one pending action would join its approval).
    for amount in (4.0, 5.0):
        r = await client.post(EXECUTE, json={**body, "action": {**body["action"], "amount": amount}}, headers=agent2)
        assert r.json()["decision"] == "escalate", r.text
        ids.append(r.json()["approval_id"])
    # One approval raced by approve and deny.
    base = f"/api/v1/orgs/{org.org_id}/approvals/{ids[0]}"
    racers = await asyncio.gather(*(client.post(f"{base}/{'approve' if i % 2 else 'deny'}", json={}, headers=approver)
                                    for i in range(20)))
    assert Counter(r.status_code for r in racers) == Counter({200: 1, 409: 19})
    # The other approved, and its override token raced.
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{ids[1]}/approve", json={}, headers=approver)
    token = r.json()["override_token"]
    uses = await asyncio.gather(*(client.post(EXECUTE, json={**body, "override_token": token}, headers=agent2)
                                  for _ in range(30)))
    assert Counter(r.json()["decision"] for r in uses) == Counter({"allow": 1, "deny": 29})
