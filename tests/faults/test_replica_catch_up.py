"""Two ``bastion serve`` replicas sharing PostgreSQL and one private Redis, where replica B
misses change-bus messages for real, and where Redis loses its data:

* a capability-token revocation and a new policy version announced while B's pub/sub
  subscription is cut reach B anyway, by its 2 s catch-up from the database (revocations) and
  its 2 s org-version poll (policies);
* an override token spent on A cannot be replayed on B after Redis restarts without
  persistence (its single-use marker is gone; B remembers the spent jti in memory).

How B misses a message: B connects to Redis as its own ACL user. Taking that user's channel
permissions away (``ACL SETUSER ... resetchannels``) makes Redis disconnect B's subscriber, and
B's resubscribe attempts fail with NOPERM while everything else B does (quotas, audit) goes on.
A message published then is lost for B — as on a real network blip — and the test checks that
B was not subscribed while A announced the change. Giving the permissions back lets B
resubscribe; it never receives the lost message.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.helpers import action_body, setup_agent
from tests.faults.procs import BastionServer, RedisServer, inherit
from tests.timing import eventually

CHANNEL = "bastion:changes:0"
B_USER, B_PASSWORD = "replica-b", "replica-b-secret"
EXECUTE = "/api/v1/gateway/execute"
EVALUATE = "/api/v1/gateway/evaluate"
# The catch-up runs every 2 s; a missed change is healed by the next run (soak: within 3 s).
CATCH_UP = 3.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, module_pg_url: str) -> Iterator[tuple[BastionServer, BastionServer, RedisServer]]:
    work: Path = tmp_path_factory.mktemp("catch-up")
    with RedisServer(work / "redis", users=(f"{B_USER} on >{B_PASSWORD} ~* &* +@all",)) as redis:
        a = BastionServer(work / "a", database_url=module_pg_url, redis_url=redis.url(), name="a")
        b = inherit(a, work / "b", "b",
                    BASTION_REDIS_URL=f"redis://{B_USER}:{B_PASSWORD}@127.0.0.1:{redis.port}/0")
        try:
            a.start()
            b.org_id, b.owner_key = a.org_id, a.owner_key
            b.start()
            yield a, b, redis
        finally:
            b.close()
            a.close()


def _subscribers(redis: RedisServer) -> int:
    c = redis.client()
    try:
        return int(dict(c.pubsub_numsub(CHANNEL))[CHANNEL.encode()])
    finally:
        c.close()


class BusCut:
    """B's change-bus subscription cut while the block runs; asserts that B was unsubscribed
    for the whole block (so what A announced in it never reached B)."""

    def __init__(self, redis: RedisServer, b: BastionServer):
        self.redis, self.b = redis, b

    def _acl(self, *rules: str) -> None:
        c = self.redis.client()
        try:
            c.execute_command("ACL", "SETUSER", B_USER, *rules)
        finally:
            c.close()

    async def __aenter__(self) -> BusCut:
        assert _subscribers(self.redis) == 2  # A and B listen
        self._acl("resetchannels")  # Redis drops B's subscriber connection

        async def only_a() -> bool:
            return _subscribers(self.redis) == 1

        await eventually(only_a, 1.0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        cut = _subscribers(self.redis) == 1
        self._acl("allchannels")

        async def both() -> bool:  # B resubscribes (its retry loop) and hears later messages
            return _subscribers(self.redis) == 2

        await eventually(both, 5.0)
        if exc[0] is None:
            assert cut, "B resubscribed while the change was announced: nothing was missed"
            assert "change bus disconnected" in self.b.log_text()


async def test_a_missed_token_revocation_reaches_the_other_replica_by_the_catch_up(pair: Any) -> None:
    a, b, redis = pair
    agent = setup_agent(a, "revoked-bot")
    async with a.aclient(agent["agent_key"]) as on_a, b.aclient(agent["agent_key"]) as on_b, \
            a.aclient(a.owner_key) as owner:
        r = await on_a.post("/api/v1/gateway/tokens", json={"uapk_id": "revoked-bot", "agent_id": "agent-1",
                                                            "capabilities": ["email:send"]})
        assert r.status_code == 201, r.text
        token, token_id = r.json()["token"], r.json()["token_id"]
        body = action_body("revoked-bot", capability_token=token)
        assert (await on_b.post(EVALUATE, json=body)).json()["decision"] == "allow"  # B has it cached

        async with BusCut(redis, b):
            r = await owner.post(f"/api/v1/orgs/{a.org_id}/capability-tokens/{token_id}/revoke")
            assert r.status_code == 200, r.text
            out = (await on_a.post(EVALUATE, json=body)).json()
            assert [x["code"] for x in out["reasons"]] == ["capability_token_revoked"]  # A: at once

        async def b_refuses() -> bool:
            out = (await on_b.post(EVALUATE, json=body)).json()
            if out["decision"] == "allow":
                return False
            assert [x["code"] for x in out["reasons"]] == ["capability_token_revoked"], out
            return True

        took = await eventually(b_refuses, CATCH_UP, interval=0.05)
        print(f"missed revocation healed on B after {took:.2f} s")


async def test_a_missed_policy_version_reaches_the_other_replica_by_the_version_poll(pair: Any) -> None:
    a, b, redis = pair
    agent = setup_agent(a, "ruled-bot", approved=["crm:read", "crm:delete"])
    body = action_body("ruled-bot", tool="crm", type="delete")
    async with b.aclient(agent["agent_key"]) as on_b, a.aclient(a.owner_key) as owner:
        before = (await on_b.post(EVALUATE, json=body)).json()
        assert before["decision"] == "allow", before  # B has the org compiled

        async with BusCut(redis, b):
            rule = {"id": "no-crm-delete", "subject": "agent:ruled-bot", "capability": "crm:delete", "effect": "deny"}
            r = await owner.post(f"/api/v1/orgs/{a.org_id}/policies/rules", json=rule)
            assert r.status_code == 201, r.text

        async def b_denies() -> bool:
            out = (await on_b.post(EVALUATE, json=body)).json()
            if out["decision"] == "allow":
                assert out["policy_version"] == before["policy_version"], out  # old or new, never a mix
                return False
            assert [x["code"] for x in out["reasons"]] == ["policy_denied"], out
            assert out["policy_version"] != before["policy_version"]
            return True

        took = await eventually(b_denies, CATCH_UP, interval=0.05)
        print(f"missed policy version healed on B after {took:.2f} s")


async def test_an_override_spent_on_one_replica_cannot_be_replayed_on_the_other_after_redis_loses_its_data(
    pair: Any,
) -> None:
    """Last in this module: it restarts Redis (the replicas reconnect)."""
    a, b, redis = pair
    agent = setup_agent(a, "replay-bot", human=["stripe:refund"])
    body = action_body("replay-bot", tool="stripe", type="refund", amount=42.0, currency="EUR")
    agent_h, approver_h = {"X-API-Key": agent["agent_key"]}, {"X-API-Key": agent["approver_key"]}
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a, \
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b:
        r = await on_a.post(EXECUTE, json=body, headers=agent_h)
        assert r.json()["decision"] == "escalate", r.text
        approval_id = r.json()["approval_id"]
        r = await on_a.post(f"/api/v1/orgs/{a.org_id}/approvals/{approval_id}/approve", json={}, headers=approver_h)
        assert r.status_code == 200, r.text
        replay = {**body, "override_token": r.json()["override_token"]}

        r = await on_a.post(EXECUTE, json=replay, headers=agent_h)  # spent on A
        assert r.status_code == 200 and r.json()["decision"] == "allow", r.text

        async def use_recorded() -> bool:
            r = await on_b.get(f"/api/v1/orgs/{a.org_id}/approvals/{approval_id}", headers=approver_h)
            return bool(r.json().get("override_used_at"))

        await eventually(use_recorded, 5.0, interval=0.1)
        marker_keys = [k for k in redis.client().scan_iter("bq:*:ovr:*")]
        assert marker_keys, "the single-use marker should be in Redis before it loses its data"
        await asyncio.to_thread(redis.kill)
        await asyncio.to_thread(redis.start)  # empty: no persistence
        assert not list(redis.client().scan_iter("bq:*:ovr:*"))

        for replica in (on_b, on_a):  # B first: it never saw the token; A's marker is gone too

            async def refuses() -> bool:  # it reconnects to the new Redis (503 until then)
                r = await replica.post(EXECUTE, json=replay, headers=agent_h)
                assert r.status_code in (200, 503), r.text
                if r.status_code == 503:
                    return False
                # The first answer given after the restart is the verdict: never an allow.
                assert r.json()["decision"] == "deny", r.text
                assert [x["code"] for x in r.json()["reasons"]] == ["override_token_already_used"], r.text
                return True

            await eventually(refuses, 5.0, interval=0.1)
