"""One agent-authentication guard (gateway/agent_auth.py) on every agent-facing route: it runs
before the body is parsed, so without a valid credential the answer is 401 whatever the body,
and a key whose role may not use the route is 403 before its body is looked at."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Org, assert_error, make_key

BAD_BODIES = [b"{not json", b"[1,2,3]", b'{"unknown": 1}', b"\xff\xfe"]
POSTS = ["/api/v1/gateway/evaluate", "/api/v1/gateway/execute", "/api/v1/gateway/tokens",
         "/api/v1/capability-tokens/verify"]
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("path", POSTS)
async def test_401_before_the_body_on_every_agent_route(client: Any, org: Org, path: str) -> None:
    for body in BAD_BODIES:
        assert_error(await client.post(path, content=body, headers=JSON), 401, "AUTHENTICATION_REQUIRED")
        assert_error(await client.post(path, content=body, headers={**JSON, "X-API-Key": "bst_nope"}), 401,
                     "AUTHENTICATION_REQUIRED")
    assert_error(await client.get(f"/api/v1/approvals/{uuid.uuid4()}"), 401, "AUTHENTICATION_REQUIRED")


async def test_role_is_checked_before_the_body(client: Any, org: Org) -> None:
    viewer = {**JSON, "X-API-Key": await make_key(client, org, "viewer")}
    for path in ("/api/v1/gateway/evaluate", "/api/v1/gateway/execute", "/api/v1/gateway/tokens"):
        assert_error(await client.post(path, content=b"{not json", headers=viewer), 403, "PERMISSION_DENIED")
    # Verifying a token is open to any key of the org: its body is read and refused.
    assert_error(await client.post("/api/v1/capability-tokens/verify", content=b"{not json", headers=viewer),
                 400, "VALIDATION_ERROR")
    # So is the approval poll (without the override token): an unknown approval is 404.
    r = await client.get(f"/api/v1/approvals/{uuid.uuid4()}", headers={"X-API-Key": viewer["X-API-Key"]})
    assert_error(r, 404, "NOT_FOUND")


async def test_a_session_is_refused_by_the_token_routes(client: Any, org: Org) -> None:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    bearer = {"Authorization": f"Bearer {r.json()['access_token']}"}
    body = {"uapk_id": "support-bot", "agent_id": "a1", "capabilities": ["crm:read"]}
    r = await client.post("/api/v1/gateway/tokens", json=body, headers=bearer)
    assert assert_error(r, 403, "PERMISSION_DENIED")["message"] == "Capability tokens are issued to agent, admin or owner API keys."
    r = await client.post("/api/v1/capability-tokens/verify", json={"token": "x"}, headers=bearer)
    assert assert_error(r, 403, "PERMISSION_DENIED")["message"] == "Use an API key of the token's organization."
    # The decision endpoints and the poll take X-API-Key only.
    assert_error(await client.post("/api/v1/gateway/execute", json={}, headers=bearer), 401, "AUTHENTICATION_REQUIRED")
    assert_error(await client.get(f"/api/v1/approvals/{uuid.uuid4()}", headers=bearer), 401, "AUTHENTICATION_REQUIRED")
