"""Override tokens are never stored: the agent's poll re-signs the approval's claims."""
from __future__ import annotations

from typing import Any

import jwt
from sqlalchemy import inspect

from gateway.approvals import create_approval
from tests.conftest import Org, make_key


async def _approved(client: Any, org: Org) -> tuple[str, str, str]:
    approval_id = await create_approval(
        client.app.state.runtime, org_id=org.org_id, uapk_id="pay-bot", agent_id="agent-1",
        capability="payments:refund", action={"type": "refund", "tool": "payments", "params": {"charge": "ch_1"},
                                              "amount": 10.0, "currency": "EUR"},
        reasons=[{"code": "requires_human_approval", "message": "m", "details": {}}], interaction_id="i-1", key_id=None,
    )
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    agent_key = await make_key(client, org, "agent")
    return approval_id, r.json()["override_token"], agent_key


async def test_poll_returns_the_same_token_and_none_is_stored(client: Any, org: Org) -> None:
    approval_id, token, agent_key = await _approved(client, org)
    polled = (await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": agent_key})).json()
    assert polled["status"] == "APPROVED" and polled["override_token"] == token
    engine = client.app.state.runtime.engine
    async with engine.connect() as conn:
        columns = await conn.run_sync(lambda c: [col["name"] for col in inspect(c).get_columns("approvals")])
        rows = (await conn.exec_driver_sql("SELECT * FROM approvals")).all()
    assert "override_token" not in columns
    assert token not in repr(rows) and token.split(".")[2] not in repr(rows)


async def test_after_rotation_the_poll_signs_with_the_new_key_and_the_same_jti(client: Any, org: Org) -> None:
    approval_id, token, agent_key = await _approved(client, org)
    new_kid = client.app.state.runtime.keys.rotate()
    polled = (await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": agent_key})).json()["override_token"]
    assert jwt.get_unverified_header(polled)["kid"] == new_kid
    old, new = (jwt.decode(t, options={"verify_signature": False}) for t in (token, polled))
    assert old == new  # same claims, same jti: still one single use between them
