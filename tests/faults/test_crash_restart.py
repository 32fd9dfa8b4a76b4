"""The server killed (SIGKILL) in the middle of a mixed load, then restarted: nothing that was
acknowledged is lost.

* every approval decision answered 200 is still decided the same way;
* every capability token issued (201) is still listed and still verifies;
* the quota counter accounts for every allow the clients saw (and at most the requests that
  were cut off in flight besides);
* every decision answered 200 has its audit event (written from the Redis stream by the
  restarted writer), and the audit chain verifies.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.faults.helpers import action_body, setup_agent
from tests.faults.load import KEEPALIVE
from tests.faults.procs import RedisServer, sized
from tests.faults.test_redis_faults import quota_used

EXECUTE = "/api/v1/gateway/execute"


def _approval_ids(events: list[dict[str, Any]]) -> set[str]:
    return {(e.get("details") or {}).get("approval_id") for e in events if str(e.get("kind", "")).startswith("approval.")}


def _interactions(events: list[dict[str, Any]]) -> set[str]:
    return {e.get("interaction_id") for e in events if e.get("kind") == "gateway.execute"}


async def _events(c: httpx.AsyncClient, org: str, key: str, done: Any, wait: float = 15.0) -> list[dict[str, Any]]:
    """Every audit event of ``org`` (all pages), polled until ``done(events)`` or ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        events: list[dict[str, Any]] = []
        while True:
            r = await c.get(f"/api/v1/orgs/{org}/audit/events?limit=100&offset={len(events)}", headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            events += items
            if not items or len(events) >= r.json()["total"]:
                break
        if done(events) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.5)


async def test_sigkill_mid_load_loses_no_acknowledged_write(redis_server: RedisServer, bastion_factory: Any) -> None:
    # More pending approvals at once than the default bound of 20 per agent.
    server = bastion_factory(redis_server.url(), BASTION_MAX_PENDING_APPROVALS="1000")
    agent = setup_agent(server, "crash-bot", hour=10**6, day=10**6, human=["stripe:refund"])
    org = server.org_id
    agent_h = {"X-API-Key": agent["agent_key"]}
    approver_h = {"X-API-Key": agent["approver_key"]}
    n_approvals = sized(40, 200)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        pending = []
        for i in range(n_approvals):
            body = action_body("crash-bot", tool="stripe", type="refund", amount=float(i + 1), currency="EUR")
            r = await c.post(EXECUTE, json=body, headers=agent_h)
            assert r.json()["decision"] == "escalate", r.text
            pending.append(r.json()["approval_id"])

    decided: dict[str, str] = {}  # approval id -> status acknowledged
    tokens: dict[str, str] = {}  # token id -> token acknowledged
    interactions: list[str] = []  # decisions acknowledged (200)
    allows = [0]
    cut_off = [0]  # requests that got no answer (killed in flight)
    stop = asyncio.Event()

    async def executes(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                r = await c.post(EXECUTE, json=action_body("crash-bot"), headers=agent_h)
            except httpx.HTTPError:
                cut_off[0] += 1
                return
            if r.status_code == 200:
                interactions.append(r.json()["interaction_id"])
                allows[0] += r.json()["decision"] == "allow"

    async def decisions(c: httpx.AsyncClient, ids: list[str]) -> None:
        for i, approval_id in enumerate(ids):
            verb = "approve" if i % 2 == 0 else "deny"
            try:
                r = await c.post(f"/api/v1/orgs/{org}/approvals/{approval_id}/{verb}", json={}, headers=approver_h)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                decided[approval_id] = r.json()["status"]
            if stop.is_set():
                return
            await asyncio.sleep(0.02)

    async def issue(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                r = await c.post("/api/v1/gateway/tokens", json={"uapk_id": "crash-bot", "agent_id": "agent-1",
                                                                "capabilities": ["email:send"]}, headers=agent_h)
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                tokens[r.json()["token_id"]] = r.json()["token"]
            await asyncio.sleep(0.02)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                 limits=httpx.Limits(max_connections=16, keepalive_expiry=KEEPALIVE)) as c:
        half = len(pending) // 2
        tasks = [asyncio.create_task(executes(c)) for _ in range(6)]
        tasks += [asyncio.create_task(decisions(c, pending[:half])), asyncio.create_task(decisions(c, pending[half:]))]
        tasks += [asyncio.create_task(issue(c)) for _ in range(2)]
        await asyncio.sleep(sized(1.5, 5.0))
        await asyncio.to_thread(server.kill)
        stop.set()
        await asyncio.gather(*tasks)

    assert decided and tokens and allows[0] > 0, (len(decided), len(tokens), allows[0])
    await asyncio.to_thread(server.start)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        # Approval decisions.
        for approval_id, status in decided.items():
            r = await c.get(f"/api/v1/orgs/{org}/approvals/{approval_id}", headers=approver_h)
            assert r.status_code == 200 and r.json()["status"] == status, (approval_id, status, r.text)
        # Capability tokens: listed, and still valid.
        listed: set[str] = set()
        offset = 0
        while True:
            r = await c.get(f"/api/v1/orgs/{org}/capability-tokens?limit=100&offset={offset}",
                            headers={"X-API-Key": server.owner_key})
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            listed |= {t["token_id"] for t in items}
            offset += len(items)
            if not items or offset >= r.json()["total"]:
                break
        assert set(tokens) <= listed, set(tokens) - listed
        for token in tokens.values():
            r = await c.post("/api/v1/capability-tokens/verify", json={"token": token}, headers=agent_h)
            assert r.status_code == 200 and r.json()["valid"] is True, r.text
        # Counters: every allow seen was counted; at most the cut-off requests besides.
        hours, days = quota_used(redis_server, org, "crash-bot")
        assert allows[0] <= hours == days <= allows[0] + cut_off[0] + 6, (allows[0], hours, cut_off[0])
        # Audit: every acknowledged approval decision and gateway decision has its event
        # (written from the Redis stream by the restarted writer), and the chain verifies.
        def complete(events: list[dict[str, Any]]) -> bool:
            return set(decided) <= _approval_ids(events) and set(interactions) <= _interactions(events)

        events = await _events(c, org, server.owner_key, complete)
        missing = set(decided) - _approval_ids(events)
        assert not missing, f"{len(missing)} of {len(decided)} acknowledged approval decisions have no audit event"
        missing = set(interactions) - _interactions(events)
        assert not missing, f"{len(missing)} of {len(interactions)} acknowledged gateway decisions have no audit event"
        r = await c.get(f"/api/v1/orgs/{org}/audit/verify", headers={"X-API-Key": server.owner_key})
        assert r.status_code == 200 and r.json()["valid"] is True, r.text

