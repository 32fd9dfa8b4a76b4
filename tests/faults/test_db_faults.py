"""The database unreachable (a TCP proxy in front of PostgreSQL, cut and restored), with a real
server: the management API answers 503 SERVICE_UNAVAILABLE with Retry-After; the gateway
keeps deciding from its compiled state only where that is safe (a loaded org, a cached key,
an action that needs no database write: every such execute is allowed), else 503; never a
500; everything comes back once the database does (within 5 s: asserted by make soak)."""
from __future__ import annotations

from typing import Any

import httpx

from tests.faults.helpers import action_body, manifest_doc, setup_agent
from tests.faults.procs import BOOT_EMAIL, BOOT_PASSWORD, RedisServer, TcpProxy, proxied
from tests.timing import eventually

EXECUTE = "/api/v1/gateway/execute"


def _unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.request.url, r.status_code, r.text)
    assert r.json()["code"] == "SERVICE_UNAVAILABLE"
    assert int(r.headers["retry-after"]) >= 1


async def test_database_unreachable(redis_server: RedisServer, bastion_factory: Any, pg_proxy: TcpProxy,
                                    pg_url: str) -> None:
    server = bastion_factory(redis_server.url(), database_url=proxied(pg_url, pg_proxy.port))
    agent = setup_agent(server, "db-bot", human=["stripe:refund"])
    base = f"/api/v1/orgs/{server.org_id}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        owner = {"X-API-Key": server.owner_key}
        agent_h = {"X-API-Key": agent["agent_key"]}
        # A second org whose state and key the gateway has never loaded.
        r = await c.post("/api/v1/auth/login", json={"email": BOOT_EMAIL, "password": BOOT_PASSWORD})
        session = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = await c.post("/api/v1/orgs", json={"name": "Cold", "slug": "cold-org"}, headers=session)
        assert r.status_code == 201, r.text
        cold_org = r.json()["org_id"]
        r = await c.post(f"/api/v1/orgs/{cold_org}/manifests", json=manifest_doc("cold-bot"), headers=session)
        r = await c.post(f"/api/v1/orgs/{cold_org}/manifests/{r.json()['manifest_id']}/approve", json={}, headers=session)
        assert r.status_code == 200, r.text
        r = await c.post(f"/api/v1/orgs/{cold_org}/api-keys", json={"name": "cold", "role": "agent"}, headers=session)
        cold_h = {"X-API-Key": r.json()["key"]}
        # Warm: the gateway has loaded db-bot's org and cached its key.
        r = await c.post(EXECUTE, json=action_body("db-bot"), headers=agent_h)
        assert r.json()["decision"] == "allow", r.text

        pg_proxy.cut()
        try:
            for url in (base, f"{base}/manifests", f"{base}/approvals", f"{base}/api-keys", f"{base}/audit/events"):
                _unavailable(await c.get(url, headers=owner))
            _unavailable(await c.post(f"{base}/manifests", json=manifest_doc("new-bot"), headers=owner))
            _unavailable(await c.post("/api/v1/auth/login", json={"email": BOOT_EMAIL, "password": BOOT_PASSWORD}))
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["database"] != "ok"
            # Safe: a loaded org, a cached key, an action that writes nothing to the database:
            # the gateway keeps deciding from its compiled state, so every one is allowed.
            during: list[str] = []  # decisions made while the database was away
            for _ in range(5):
                r = await c.post(EXECUTE, json=action_body("db-bot"), headers=agent_h)
                assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
                during.append(r.json()["interaction_id"])
            # Not safe: an escalation needs its approval written -> 503, never an escalate
            # without an approval, never an allow.
            r = await c.post(EXECUTE, json=action_body("db-bot", tool="stripe", type="refund"), headers=agent_h)
            _unavailable(r)
            # Not loaded: a key and an org the gateway has never seen -> 503.
            _unavailable(await c.post(EXECUTE, json=action_body("cold-bot"), headers=cold_h))
        finally:
            pg_proxy.restore()

        async def recovered() -> bool:
            r = await c.get(f"{base}/manifests", headers=owner)
            assert r.status_code in (200, 503), r.text
            return r.status_code == 200

        await eventually(recovered, 5.0, interval=0.1)  # the 5 s figure is asserted by make soak
        r = await c.post(EXECUTE, json=action_body("db-bot"), headers=agent_h)
        assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
        after = r.json()["interaction_id"]
        r = await c.post(EXECUTE, json=action_body("cold-bot"), headers=cold_h)
        assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
        # Decisions answered while the database was away reach the audit trail once it is back.
        listed: dict[str, Any] = {}

        async def all_audited() -> bool:
            r = await c.get(f"{base}/audit/events?kind=gateway.execute&limit=100", headers=owner)
            assert r.status_code == 200, r.text
            listed["items"] = r.json()["items"]
            return set(during) | {after} <= {e.get("interaction_id") for e in listed["items"]}

        await eventually(all_audited, 15.0, interval=0.25)
        # ... in the order they were made: before the decision made after the recovery.
        seq = {e.get("interaction_id"): e["seq"] for e in listed["items"]}
        assert all(seq[i] < seq[after] for i in during), "audit events of the outage were appended out of order"
        r = await c.get(f"{base}/audit/verify", headers=owner)
        assert r.status_code == 200 and r.json()["valid"] is True, r.text
        r = await c.post(EXECUTE, json=action_body("db-bot", tool="stripe", type="refund"), headers=agent_h)
        assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text
    assert '"status": 500' not in server.log_text()
