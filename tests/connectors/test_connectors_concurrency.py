"""Concurrent registrations of one name: one wins, the others get 409 (never a 500)."""
from __future__ import annotations

import asyncio

from tests.conftest import Client, Org


async def test_concurrent_registrations_of_one_name(client: Client, org: Org) -> None:
    body = {"name": "crm", "transport": "stdio", "command": "x"}
    answers = await asyncio.gather(*[
        client.post(f"/api/v1/orgs/{org.org_id}/mcp-servers", json=body, headers=org.headers) for _ in range(8)])
    assert sorted(r.status_code for r in answers) == [201] + [409] * 7, [r.text for r in answers]
    r = await client.get(f"/api/v1/orgs/{org.org_id}/mcp-servers", headers=org.headers)
    assert r.json()["total"] == 1


async def test_concurrent_bindings_of_one_capability(client: Client, org: Org) -> None:
    conns = []
    for i in range(4):
        r = await client.post(f"/api/v1/orgs/{org.org_id}/http-connectors", json={
            "name": f"c{i}", "method": "GET", "url_template": "https://x.example.com/"}, headers=org.headers)
        conns.append(r.json()["id"])
    answers = await asyncio.gather(*[
        client.post(f"/api/v1/orgs/{org.org_id}/bindings", json={"capability": "crm:read", "http_connector_id": c},
                    headers=org.headers) for c in conns])
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409], [r.text for r in answers]
