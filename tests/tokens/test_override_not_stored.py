"""Override tokens are never stored: the agent's poll re-signs the approval's claims. A
re-signed token (after a key rotation: another signature, the same jti) shares the single use
of the original, in both directions."""
from __future__ import annotations

from typing import Any

import jwt
from sqlalchemy import inspect

from tests.conftest import Org, make_key
from tests.gateway.factories import action, add_manifest

EXECUTE = "/api/v1/gateway/execute"
REFUND = action("pay-bot", tool="payments", type="refund", amount=10.0, currency="EUR", params={"charge": "ch_1"})


async def _agent(client: Any, org: Org) -> dict[str, str]:
    await add_manifest(client.app.state.runtime, org.org_id, "pay-bot", approved=["payments:refund"],
                       require_human_approval=["payments:refund"])
    return {"X-API-Key": await make_key(client, org, "agent", ["pay-bot"])}


async def _approved(client: Any, org: Org, agent: dict[str, str]) -> tuple[str, str]:
    """Escalate the refund through the gateway and approve it: (approval id, override token)."""
    r = await client.post(EXECUTE, json=REFUND, headers=agent)
    assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text
    approval_id = r.json()["approval_id"]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/approvals/{approval_id}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    return approval_id, r.json()["override_token"]


async def _execute(client: Any, agent: dict[str, str], token: str) -> tuple[str, str]:
    r = await client.post(EXECUTE, json={**REFUND, "override_token": token}, headers=agent)
    assert r.status_code == 200, r.text
    return r.json()["decision"], r.json()["reasons"][0]["code"]


async def test_poll_returns_the_same_token_and_none_is_stored(client: Any, org: Org) -> None:
    agent = await _agent(client, org)
    approval_id, token = await _approved(client, org, agent)
    polled = (await client.get(f"/api/v1/approvals/{approval_id}", headers=agent)).json()
    assert polled["status"] == "APPROVED" and polled["override_token"] == token
    engine = client.app.state.runtime.engine
    async with engine.connect() as conn:
        columns = await conn.run_sync(lambda c: [col["name"] for col in inspect(c).get_columns("approvals")])
        rows = (await conn.exec_driver_sql("SELECT * FROM approvals")).all()
    assert "override_token" not in columns
    assert token not in repr(rows) and token.split(".")[2] not in repr(rows)


async def test_after_rotation_the_poll_signs_with_the_new_key_and_the_same_jti(client: Any, org: Org) -> None:
    agent = await _agent(client, org)
    approval_id, token = await _approved(client, org, agent)
    new_kid = client.app.state.runtime.keys.rotate()
    polled = (await client.get(f"/api/v1/approvals/{approval_id}", headers=agent)).json()["override_token"]
    assert polled != token and jwt.get_unverified_header(polled)["kid"] == new_kid
    old, new = (jwt.decode(t, options={"verify_signature": False}) for t in (token, polled))
    assert old == new  # same claims, same jti


async def test_the_original_and_the_re_signed_token_share_one_use(client: Any, org: Org) -> None:
    """Spend one of the two tokens of an approval, replay the other: refused, whichever was
    spent first."""
    agent = await _agent(client, org)
    first, second = await _approved(client, org, agent), await _approved(client, org, agent)
    client.app.state.runtime.keys.rotate()
    resigned = {}
    for approval_id, token in (first, second):
        resigned[approval_id] = (await client.get(f"/api/v1/approvals/{approval_id}", headers=agent)).json()["override_token"]
        assert resigned[approval_id] != token
    # The original spent, the re-signed one replayed.
    assert await _execute(client, agent, first[1]) == ("allow", "override_token_accepted")
    assert await _execute(client, agent, resigned[first[0]]) == ("deny", "override_token_already_used")
    # The re-signed one spent, the original replayed.
    assert await _execute(client, agent, resigned[second[0]]) == ("allow", "override_token_accepted")
    assert await _execute(client, agent, second[1]) == ("deny", "override_token_already_used")
