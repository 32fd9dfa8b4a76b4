"""HTTP set-up shared by the fault tests: an active manifest and an agent key, over the API."""
from __future__ import annotations

from typing import Any

import httpx

from tests.faults.procs import BastionServer


def manifest_doc(uapk_id: str, *, hour: int = 100, day: int = 1000, approved: list[str] | None = None,
                 human: list[str] | None = None) -> dict[str, Any]:
    constraints: dict[str, Any] = {"max_actions_per_hour": hour, "max_actions_per_day": day}
    if human:
        constraints["require_human_approval"] = human
    return {
        "version": "1.0",
        "agent": {"id": uapk_id, "name": uapk_id.title(), "version": "1.0.0", "team": "support"},
        "capabilities": {"requested": approved or ["email:send", "crm:read", "stripe:refund"]},
        "constraints": constraints,
    }


def setup_agent(server: BastionServer, uapk_id: str = "load-bot", **manifest: Any) -> dict[str, str]:
    """Register and approve a manifest, create an agent key (restricted to it) and an
    approver key. Returns ids and keys."""
    with server.client(server.owner_key) as owner:
        base = f"/api/v1/orgs/{server.org_id}"
        r = owner.post(f"{base}/manifests", json=manifest_doc(uapk_id, **manifest))
        assert r.status_code == 201, r.text
        manifest_id = r.json()["manifest_id"]
        r = owner.post(f"{base}/manifests/{manifest_id}/approve", json={"notes": "fault suite"})
        assert r.status_code == 200, r.text
        keys = {}
        for role in ("agent", "approver"):
            body: dict[str, Any] = {"name": f"{uapk_id}-{role}", "role": role}
            if role == "agent":
                body["uapk_ids"] = [uapk_id]
            r = owner.post(f"{base}/api-keys", json=body)
            assert r.status_code == 201, r.text
            keys[role] = r.json()["key"]
    return {"uapk_id": uapk_id, "manifest_id": manifest_id, "agent_key": keys["agent"],
            "approver_key": keys["approver"]}


def action_body(uapk_id: str, tool: str = "email", type: str = "send", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"uapk_id": uapk_id, "agent_id": "agent-1",
                            "action": {"type": type, "tool": tool, "params": {"n": 1}}}
    for k in ("amount", "currency", "params"):
        if k in extra:
            body["action"][k] = extra.pop(k)
    body.update(extra)
    return body


def decision(resp: httpx.Response) -> str:
    """``allow``/``deny``/``escalate`` for a 200, else ``http-<status>``."""
    if resp.status_code == 200:
        return str(resp.json()["decision"])
    return f"http-{resp.status_code}"
