"""Capability-token revocation reaches another *process* within a second: two `bastion serve`
replicas sharing PostgreSQL and Redis; revoked on one, refused by the other."""
from __future__ import annotations

import time
from typing import Any

from tests.faults.helpers import action_body, setup_agent


def test_revocation_reaches_the_other_replica_within_a_second(replicas: Any) -> None:
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
        revoked_at = time.monotonic()
        while True:
            decision = agent_b.post("/api/v1/gateway/evaluate", json=body).json()
            if decision["decision"] == "deny":
                break
            assert time.monotonic() - revoked_at < 1.0, "replica b still accepts the revoked token after 1 s"
            time.sleep(0.02)
        assert [x["code"] for x in decision["reasons"]] == ["capability_token_revoked"]
        v = agent_b.post("/api/v1/capability-tokens/verify", json={"token": token}).json()
        assert v["valid"] is False and v["reason"] == "capability_token_revoked"
