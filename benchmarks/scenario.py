"""The benchmark organization: who the agents are, and the request mix the load generator sends.

Set up over the real management API (so the figures include nothing the server would not
really have): one org, an agent-role API key restricted to the bench agents, and manifests:

* ``bench-agent-<k>`` (k < ALLOW_AGENTS): active, approved ``crm:read``, ``crm:update``,
  ``email:send`` and ``files:*``; quotas high enough never to bind during a run.
* ``bench-quota``: active, ``crm:read``, ``max_actions_per_hour`` 1: after its first action
  every execute is denied ``hourly_budget_exceeded`` (the over-quota share of the mix).
* capability tokens: the request class is defined (``captoken``) but sent only once the
  gateway honours ``capability_token`` on execute (``CAPTOKEN_IN_PIPELINE``); until then the
  summary marks it "not yet measured".

The mix, by weight out of 20: 15 allow (spread over agents and capabilities, wildcard grants
included), 3 deny (a capability the manifest does not grant), 2 over quota.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

ALLOW_AGENTS = 8
ALLOW_CAPS = ["crm:read", "crm:update", "email:send", "files:*"]
HIGH = 10**9
EXECUTE = "/api/v1/gateway/execute"
EVALUATE = "/api/v1/gateway/evaluate"
CAPTOKEN_AGENT = "bench-inst-captoken"


class HttpError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def call(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    h = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read().decode(errors="replace")
        raise HttpError(e.code, raw) from None


def manifest_doc(uapk_id: str, caps: list[str], per_hour: int, per_day: int, version: str = "1.0.0",
                 extra_constraints: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": "1.0",
        "agent": {"id": uapk_id, "name": f"Bench {uapk_id}", "version": version, "team": "bench"},
        "capabilities": {"requested": caps},
        "constraints": {"max_actions_per_hour": per_hour, "max_actions_per_day": per_day,
                        **(extra_constraints or {})},
    }


def register_and_approve(port: int, org_id: str, owner_key: str, doc: dict[str, Any]) -> tuple[str, float, float]:
    """(manifest_id, register seconds, approve seconds)."""
    h = {"X-API-Key": owner_key}
    t0 = time.perf_counter()
    status, reg = call(port, "POST", f"/api/v1/orgs/{org_id}/manifests", doc, h)
    t1 = time.perf_counter()
    mid = reg["manifest_id"]
    status, _ = call(port, "POST", f"/api/v1/orgs/{org_id}/manifests/{mid}/approve", {}, h)
    t2 = time.perf_counter()
    return mid, t1 - t0, t2 - t1


@dataclass
class Scenario:
    org_id: str
    owner_key: str
    agent_key: str = ""
    uapk_ids: list[str] = field(default_factory=list)
    captoken: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"org_id": self.org_id, "uapk_ids": self.uapk_ids, "captoken": bool(self.captoken), "notes": self.notes}


def setup(port: int, org_id: str, owner_key: str) -> Scenario:
    sc = Scenario(org_id, owner_key)
    for k in range(ALLOW_AGENTS):
        uid = f"bench-agent-{k}"
        register_and_approve(port, org_id, owner_key, manifest_doc(uid, ALLOW_CAPS, HIGH, HIGH))
        sc.uapk_ids.append(uid)
    register_and_approve(port, org_id, owner_key, manifest_doc("bench-quota", ["crm:read"], 1, HIGH))
    sc.uapk_ids.append("bench-quota")
    status, key = call(port, "POST", f"/api/v1/orgs/{org_id}/api-keys",
                       {"name": "bench-agents", "role": "agent", "uapk_ids": sc.uapk_ids},
                       {"X-API-Key": owner_key})
    sc.agent_key = key["key"]
    sc.captoken = issue_captoken(port, sc)
    return sc


def issue_captoken(port: int, sc: Scenario) -> str | None:
    """Hook: a capability token for bench-agent-0 (crm:read). Sent in the mix only when the
    gateway honours tokens on execute (see ``captoken_in_pipeline``)."""
    try:
        status, tok = call(port, "POST", "/api/v1/gateway/tokens",
                           {"uapk_id": "bench-agent-0", "agent_id": CAPTOKEN_AGENT, "capabilities": ["crm:read"],
                            "expires_in_seconds": 3600},
                           {"X-API-Key": sc.agent_key})
        return str(tok["token"])
    except (HttpError, KeyError, TypeError) as exc:
        sc.notes.append(f"capability token not issued: {exc}")
        return None


def captoken_in_pipeline() -> bool:
    """Does the decision path look at ``capability_token`` yet? (capability tokens land in
    the gateway with another issue; until then the mix sends none)."""
    import inspect

    try:
        from gateway import evaluate
    except ImportError:
        return False
    return "capability_token" in inspect.getsource(evaluate)


def _action_body(uapk_id: str, cap: str, n: int, token: str | None = None, agent_id: str | None = None) -> str:
    tool, _, typ = cap.partition(":")
    body: dict[str, Any] = {
        "uapk_id": uapk_id,
        "agent_id": agent_id or f"bench-inst-{n}",
        "action": {"type": typ, "tool": tool, "params": {"id": n, "note": "benchmark"}},
        "context": {"run": "bench"},
    }
    if token:
        body["capability_token"] = token
    return json.dumps(body, separators=(",", ":"))


def request_mix(sc: Scenario, path: str = EXECUTE, with_captokens: bool | None = None) -> list[dict[str, Any]]:
    """Weighted request classes for benchmarks.loadgen; expected statuses: decisions are 200."""
    h = {"x-api-key": sc.agent_key}
    reqs: list[dict[str, Any]] = []
    # 15 allow: every agent, every granted capability (files:write by the files:* wildcard).
    allow_caps = ["crm:read", "crm:update", "email:send", "files:write"]
    variants = [(f"bench-agent-{k}", allow_caps[k % len(allow_caps)]) for k in range(ALLOW_AGENTS)]
    variants += [(f"bench-agent-{k}", allow_caps[(k + 1) % len(allow_caps)]) for k in range(ALLOW_AGENTS)]
    for i, (uid, cap) in enumerate(variants[:15]):
        reqs.append({"name": "allow", "path": path, "headers": h, "body": _action_body(uid, cap, i),
                     "expect_status": [200], "weight": 1, "expect_decision": "allow"})
    for i in range(3):
        reqs.append({"name": "deny", "path": path, "headers": h,
                     "body": _action_body(f"bench-agent-{i}", "crm:delete", 100 + i),
                     "expect_status": [200], "weight": 1, "expect_decision": "deny"})
    for i in range(2):
        reqs.append({"name": "over_quota", "path": path, "headers": h,
                     "body": _action_body("bench-quota", "crm:read", 200 + i),
                     "expect_status": [200], "weight": 1, "expect_decision": "deny"})
    if with_captokens is None:
        with_captokens = captoken_in_pipeline() and bool(sc.captoken)
    if with_captokens and sc.captoken:
        for i in range(2):
            reqs.append({"name": "captoken", "path": path, "headers": h,
                         "body": _action_body("bench-agent-0", "crm:read", 300 + i, sc.captoken, agent_id=CAPTOKEN_AGENT),
                         "expect_status": [200], "weight": 1, "expect_decision": "allow"})
    return reqs


def only(reqs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in reqs if r["name"] == name]


BASELINE_BODY = _action_body("bench-agent-0", "crm:read", 0)


def baseline_mix() -> list[dict[str, Any]]:
    return [{"name": "baseline", "path": EXECUTE, "headers": {"x-api-key": "bk_baseline-not-checked"},
             "body": BASELINE_BODY, "expect_status": [200], "weight": 1}]
