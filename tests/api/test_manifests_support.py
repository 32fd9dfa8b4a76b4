"""Shared helpers for the manifests API tests."""
from __future__ import annotations

import copy
from typing import Any

from tests.conftest import Org

PAGE_DOC: dict[str, Any] = {
    "version": "1.0",
    "agent": {
        "id": "customer-support-bot",
        "name": "Customer Support Bot",
        "version": "1.0.0",
        "description": "AI agent for handling customer inquiries",
        "organization": "acme-corp",
        "team": "support",
    },
    "capabilities": {"requested": ["email:send", "email:read", "crm:read", "crm:update"]},
    "constraints": {"max_actions_per_hour": 100, "max_actions_per_day": 500, "require_human_approval": ["crm:delete"]},
    "metadata": {"contact": "support-team@acme.com", "documentation": "https://docs.acme.com/agents/support-bot"},
}


def base(org: Org | str) -> str:
    org_id = org if isinstance(org, str) else org.org_id
    return f"/api/v1/orgs/{org_id}/manifests"


def doc(agent_id: str = "customer-support-bot", version: str = "1.0.0", **agent_extra: Any) -> dict[str, Any]:
    d = copy.deepcopy(PAGE_DOC)
    d["agent"]["id"] = agent_id
    d["agent"]["version"] = version
    d["agent"].update(agent_extra)
    return d


async def register(client: Any, org: Org, document: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await client.post(base(org), json=document if document is not None else doc(), headers=headers or org.headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def act(client: Any, org: Org, manifest_id: str, action: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> Any:
    return await client.post(f"{base(org)}/{manifest_id}/{action}", json=body if body is not None else {}, headers=headers or org.headers)


async def in_state(client: Any, org: Org, state: str, agent_id: str) -> str:
    """A manifest id of a fresh agent brought into ``state``."""
    first = await register(client, org, doc(agent_id))
    mid = first["manifest_id"]
    steps = {
        "pending": [],
        "active": ["approve"],
        "rejected": ["reject"],
        "suspended": ["approve", "suspend"],
        "revoked": ["revoke"],
        "superseded": ["approve"],
    }[state]
    for step in steps:
        r = await act(client, org, mid, step)
        assert r.status_code == 200, r.text
    if state == "superseded":
        second = await register(client, org, doc(agent_id, "1.1.0"))
        r = await act(client, org, second["manifest_id"], "approve")
        assert r.status_code == 200, r.text
    got = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    assert got["status"] == state, got
    return mid  # type: ignore[no-any-return]


def reorder(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value
