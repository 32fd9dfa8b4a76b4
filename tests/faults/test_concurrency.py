"""Concurrency invariants under load, with two ``bastion serve`` replicas sharing PostgreSQL
and Redis (requests alternate between them):

* quotas never over-admit: far more requests than the limit -> exactly the limit, for the
  hour window and for the day window;
* an override token is spent once, however many replicas race to use it;
* an approval is decided once (concurrent approve/deny: one 200, the rest 409);
* manifest transitions are race-free (concurrent transitions: one wins, the state and the
  history agree with it).
"""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.faults.helpers import action_body, setup_agent
from tests.faults.load import KEEPALIVE
from tests.faults.procs import BastionServer, RedisServer, sized
from tests.timing import eventually

EXECUTE = "/api/v1/gateway/execute"
Replicas = tuple[BastionServer, BastionServer, RedisServer]


async def _fan_out(servers: list[BastionServer], key: str, calls: list[tuple[str, str, Any]],
                   concurrency: int, tolerate_transport_errors: bool = False) -> list[Any]:
    """Send ``calls`` (method, url, json) round-robin over the replicas, ``concurrency`` at
    a time per replica; returns the responses in call order."""
    clients = [httpx.AsyncClient(base_url=s.base_url, headers={"X-API-Key": key}, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency, keepalive_expiry=KEEPALIVE)) for s in servers]
    slots = [asyncio.Semaphore(concurrency) for _ in servers]

    async def send(i: int, method: str, url: str, body: Any) -> httpx.Response:
        k = i % len(clients)
        async with slots[k]:
            return await clients[k].request(method, url, json=body)

    try:
        out = await asyncio.gather(*(send(i, m, u, b) for i, (m, u, b) in enumerate(calls)),
                                   return_exceptions=tolerate_transport_errors)
        for r in out:
            if isinstance(r, BaseException) and not isinstance(r, httpx.TransportError):
                raise r
        return list(out)
    finally:
        for c in clients:
            await c.aclose()


def _decisions(responses: list[httpx.Response]) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in responses:
        assert r.status_code == 200, r.text
        out[r.json()["decision"]] += 1
    return out


def _reason_codes(responses: list[httpx.Response], decision: str) -> Counter[str]:
    return Counter(r.json()["reasons"][0]["code"] for r in responses if r.json()["decision"] == decision)


async def test_quotas_never_over_admit_across_replicas(replicas: Replicas) -> None:
    a, b, redis = replicas
    limit = 100
    n = sized(1000, 10000)  # per agent (2,000 in all); far above the limit either way
    hourly = setup_agent(a, "hourly-bot", hour=limit, day=10 * n)
    daily = setup_agent(a, "daily-bot", hour=10 * n, day=limit)
    results = {}
    for agent in (hourly, daily):
        calls = [("POST", EXECUTE, action_body(agent["uapk_id"]))] * n
        results[agent["uapk_id"]] = await _fan_out([a, b], agent["agent_key"], calls, concurrency=sized(16, 32),
                                                   tolerate_transport_errors=True)

    # A request the load generator lost in transit (a connection dropped under load) has an
    # unknown outcome: it may have been allowed. The quota is judged by the counters themselves
    # and by every answer we did get. The windows are real UTC hours and days (Redis TIME): a
    # run that crosses a boundary fills two windows, so each window is judged on its own —
    # never above the limit, and the one that took the brunt exactly at it.
    c = redis.client()
    try:
        for uapk, code, limited in (("hourly-bot", "hourly_budget_exceeded", "h"),
                                    ("daily-bot", "budget_exceeded", "d")):
            answered = [r for r in results[uapk] if isinstance(r, httpx.Response)]
            lost = n - len(answered)
            assert lost <= n // 100, f"{lost} of {n} requests got no answer"
            got = _decisions(answered)
            assert got["deny"] == len(answered) - got["allow"], got
            assert _reason_codes(answered, "deny") == Counter({code: got["deny"]})
            base = f"bq:\\{{{a.org_id}:{uapk}\\}}"
            windows = {w: [int(c.get(k) or 0) for k in c.scan_iter(f"{base}:{w}:*")] for w in ("h", "d")}
            admitted = sum(windows["h"])
            assert sum(windows["d"]) == admitted, windows  # every allow counted once per window kind
            assert got["allow"] <= admitted <= got["allow"] + lost, (uapk, got, lost, windows)
            assert max(windows[limited]) == limit and all(x <= limit for x in windows[limited]), (uapk, windows)
    finally:
        c.close()


async def _escalated_and_approved(a: BastionServer, agent: dict[str, str], amount: float) -> tuple[dict[str, Any], str, str]:
    body = action_body(agent["uapk_id"], tool="stripe", type="refund", amount=amount, currency="EUR",
                       params={"charge_id": f"ch_{amount}"})
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as c:
        r = await c.post(EXECUTE, json=body, headers={"X-API-Key": agent["agent_key"]})
        assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text
        approval_id = r.json()["approval_id"]
        r = await c.post(f"/api/v1/orgs/{a.org_id}/approvals/{approval_id}/approve", json={"notes": "ok"},
                         headers={"X-API-Key": agent["approver_key"]})
        assert r.status_code == 200, r.text
        token = r.json()["override_token"]
        assert token
    return body, approval_id, token


async def test_override_token_is_spent_once_across_replicas(replicas: Replicas) -> None:
    a, b, _ = replicas
    agent = setup_agent(a, "refund-bot", hour=10_000, day=10_000, human=["stripe:refund"])
    racers = sized(24, 200)
    for round_no in range(sized(2, 5)):
        body, approval_id, token = await _escalated_and_approved(a, agent, 100.0 + round_no)
        calls = [("POST", EXECUTE, {**body, "override_token": token})] * racers
        out = _decisions(await _fan_out([a, b], agent["agent_key"], calls, concurrency=racers))
        assert out == Counter({"allow": 1, "deny": racers - 1}), out
        # The approval records the one use (off the response path, so allow a moment).
        async with httpx.AsyncClient(base_url=b.base_url, timeout=30) as c:

            async def use_recorded() -> bool:
                r = await c.get(f"/api/v1/orgs/{a.org_id}/approvals/{approval_id}",
                                headers={"X-API-Key": agent["approver_key"]})
                assert r.status_code == 200, r.text
                return bool(r.json().get("override_used_at"))

            await eventually(use_recorded, 5.0, interval=0.1)


async def test_an_approval_is_decided_once(replicas: Replicas) -> None:
    a, b, _ = replicas
    agent = setup_agent(a, "decide-bot", hour=10_000, day=10_000, human=["stripe:refund"])
    racers = sized(16, 64)
    for round_no in range(sized(3, 10)):
        body = action_body(agent["uapk_id"], tool="stripe", type="refund", amount=float(round_no), currency="EUR")
        async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as c:
            r = await c.post(EXECUTE, json=body, headers={"X-API-Key": agent["agent_key"]})
        approval_id = r.json()["approval_id"]
        base = f"/api/v1/orgs/{a.org_id}/approvals/{approval_id}"
        calls = [("POST", f"{base}/{'approve' if i % 2 else 'deny'}", {"notes": f"racer {i}"}) for i in range(racers)]
        responses = await _fan_out([a, b], agent["approver_key"], calls, concurrency=racers)
        statuses = Counter(r.status_code for r in responses)
        assert statuses == Counter({200: 1, 409: racers - 1}), statuses
        winner = next(r for r in responses if r.status_code == 200).json()
        async with httpx.AsyncClient(base_url=b.base_url, timeout=30) as c:
            final = (await c.get(base, headers={"X-API-Key": agent["approver_key"]})).json()
        assert final["status"] == winner["status"] in ("APPROVED", "DENIED")
        assert final["notes"] == winner["notes"]


async def test_manifest_transitions_are_race_free(replicas: Replicas) -> None:
    a, b, _ = replicas
    racers = sized(12, 48)
    owner = a.owner_key
    from tests.faults.helpers import manifest_doc

    for round_no in range(sized(2, 6)):
        uapk = f"race-bot-{round_no}"
        async with httpx.AsyncClient(base_url=a.base_url, headers={"X-API-Key": owner}, timeout=30) as c:
            r = await c.post(f"/api/v1/orgs/{a.org_id}/manifests", json=manifest_doc(uapk))
            assert r.status_code == 201, r.text
        mid = r.json()["manifest_id"]
        base = f"/api/v1/orgs/{a.org_id}/manifests/{mid}"
        # pending: approve and reject race -> exactly one wins.
        calls = [("POST", f"{base}/{'approve' if i % 2 else 'reject'}", {"notes": f"r{i}"} if i % 2 else {"reason": f"r{i}"})
                 for i in range(racers)]
        responses = await _fan_out([a, b], owner, calls, concurrency=racers)
        statuses = Counter(r.status_code for r in responses)
        assert statuses[200] == 1 and statuses[409] == racers - 1, (statuses, [r.text for r in responses if r.status_code not in (200, 409)][:3])
        winner = next(r for r in responses if r.status_code == 200).json()["status"]
        if winner == "active":
            # The same transition raced: exactly one wins each time.
            for verb, body, to in (("suspend", {"reason": "r"}, "suspended"), ("reactivate", {}, "active")):
                calls = [("POST", f"{base}/{verb}", body)] * racers
                responses = await _fan_out([a, b], owner, calls, concurrency=racers)
                statuses = Counter(r.status_code for r in responses)
                assert statuses == Counter({200: 1, 409: racers - 1}), (verb, statuses)
                assert next(r for r in responses if r.status_code == 200).json()["status"] == to
            # Suspend and revoke raced: revoke is allowed from suspended too, so either one
            # wins, or suspend then revoke; never revoke then suspend, never twice the same.
            calls = [("POST", f"{base}/{'suspend' if i % 2 else 'revoke'}", {"reason": f"r{i}"}) for i in range(racers)]
            responses = await _fan_out([a, b], owner, calls, concurrency=racers)
            won = sorted(r.json()["status"] for r in responses if r.status_code == 200)
            assert Counter(r.status_code for r in responses)[409] == racers - len(won)
            assert won in (["revoked"], ["suspended"], ["revoked", "suspended"]), won
            winner = "revoked" if "revoked" in won else "suspended"
        async with httpx.AsyncClient(base_url=b.base_url, headers={"X-API-Key": owner}, timeout=30) as c:
            detail = (await c.get(base)).json()
            assert detail["status"] == winner, (detail, winner)


async def test_audit_chain_never_forks(replicas: Replicas) -> None:
    """After the races above (approval decisions on both replicas), one chain: sequence numbers
    1..N without gaps or duplicates, the same from either replica, and it verifies."""
    a, b, _ = replicas
    # A last burst of audited changes from both replicas at once.
    agent = setup_agent(a, "audit-bot", hour=10_000, day=10_000, human=["stripe:refund"])
    ids = []
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as c:
        for i in range(sized(16, 64)):
            body = action_body("audit-bot", tool="stripe", type="refund", amount=float(i), currency="EUR")
            r = await c.post(EXECUTE, json=body, headers={"X-API-Key": agent["agent_key"]})
            ids.append(r.json()["approval_id"])
    calls = [("POST", f"/api/v1/orgs/{a.org_id}/approvals/{i}/{'approve' if n % 2 else 'deny'}", {})
             for n, i in enumerate(ids)]
    statuses = Counter(r.status_code for r in await _fan_out([a, b], agent["approver_key"], calls, concurrency=16))
    assert statuses == Counter({200: len(ids)}), statuses

    async def chain(server: BastionServer) -> list[tuple[int, str, str]]:
        """The whole chain as this replica lists it, once every approval decision above is in
        it (the writers append off the response path)."""
        out: list[tuple[int, str, str]] = []
        async with httpx.AsyncClient(base_url=server.base_url, headers={"X-API-Key": server.owner_key}, timeout=30) as c:

            async def every_decision_listed() -> bool:
                out.clear()
                decided = set()
                while True:
                    r = await c.get(f"/api/v1/orgs/{server.org_id}/audit/events?limit=100&offset={len(out)}")
                    assert r.status_code == 200, r.text
                    items = r.json()["items"]
                    out.extend((e["seq"], e["hash"], e["event_id"]) for e in items)
                    decided.update((e["details"] or {}).get("approval_id") for e in items
                                   if e["kind"] in ("approval.approved", "approval.denied"))
                    if not items or len(out) >= r.json()["total"]:
                        return set(ids) <= decided

            await eventually(every_decision_listed, 5.0, interval=0.1)
            r = await c.get(f"/api/v1/orgs/{server.org_id}/audit/verify")
            assert r.status_code == 200 and r.json()["valid"] is True, r.text
        return sorted(out)

    ca, cb = await chain(a), await chain(b)
    assert ca == cb
    seqs = [s for s, _, _ in ca]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gaps or duplicates in the chain"
    assert len({h for _, h, _ in ca}) == len(ca) and len({e for _, _, e in ca}) == len(ca)
    assert len(ca) >= len(ids)
