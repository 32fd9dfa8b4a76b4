"""Capability-token revocation reaches another *process*: two `bastion serve` replicas sharing
PostgreSQL and Redis; revoked on one, refused by the other (within a second: the figure is
asserted by make soak; a missed message is tested in test_replica_catch_up.py)."""
from __future__ import annotations

from typing import Any

from tests.faults.helpers import action_body, setup_agent
from tests.timing import eventually_sync


def test_revocation_reaches_the_other_replica(replicas: Any) -> None:
    a, b, _redis = replicas
    agent = setup_agent(a, "token-bot")
    with a.client(agent["agent_key"]) as agent_a, b.client(agent["agent_key"]) as agent_b, a.client(a.owner_key) as owner:
        r = agent_a.post("/api/v1/gateway/tokens", json={"uapk_id": "token-bot", "agent_id": "agent-1",
                                                           "capabilities": ["email:send"]})
        assert r.status_code == 201, r.text
        token, token_id = r.json()["token"], r.json()["token_id"]
        body = action_body("token-bot", capability_token=token)
        assert agent_b.post("/api/v1/gateway/evaluate", json=body).json()["decision"] == "allow"

        r = owner.post(f"/api/v1/orgs/{a.org_id}/capability-tokens/{token_id}/revoke")
        assert r.status_code == 200, r.text
        seen: dict[str, Any] = {}

        def b_refuses() -> bool:
            seen.update(agent_b.post("/api/v1/gateway/evaluate", json=body).json())
            return seen["decision"] == "deny"

        took = eventually_sync(b_refuses, 1.0)  # the 1 s figure is asserted by make soak
        print(f"revocation refused by replica b after {took:.3f} s")
        assert [x["code"] for x in seen["reasons"]] == ["capability_token_revoked"]
        v = agent_b.post("/api/v1/capability-tokens/verify", json={"token": token}).json()
        assert v["valid"] is False and v["reason"] == "capability_token_revoked"
