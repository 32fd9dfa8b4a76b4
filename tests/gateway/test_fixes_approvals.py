"""Issue 11, approvals and override tokens: regression tests through the HTTP API, on both
backends (SQLite embedded; PostgreSQL + Redis).

* item 3: an override token is bound to the whole action (tool, type, capability, params,
  amount, currency, description, every counterparty field), and the approver sees them all.
"""
from __future__ import annotations

import copy
import functools
from typing import Any

import msgspec

from core.settings import load_settings
from gateway.overrides import check_override, issue_override
from gateway.pipeline import Pipeline
from gateway.schemas import GatewayActionRequest
from policies.compile import ManifestSnapshot, OrgPolicySource, compile_org
from store.keystore import KeyStore
from store.quotas import MemoryQuotas
from tests.conftest import Org, make_key

UAPK_ID = "pay-bot"
AGENT_ID = "agent-1"
MANIFEST: dict[str, Any] = {
    "version": "1.0",
    "agent": {"id": UAPK_ID, "name": "Pay Bot", "version": "1.0.0"},
    "capabilities": {"requested": ["payments:transfer", "crm:read"]},
    "constraints": {"max_actions_per_hour": 1000, "max_actions_per_day": 1000,
                    "require_human_approval": ["payments:transfer"]},
}
TRANSFER: dict[str, Any] = {
    "type": "transfer", "tool": "payments", "params": {"iban": "DE89370400440532013000"},
    "amount": 250.0, "currency": "EUR", "description": "Invoice 2024-17",
}
ALICE: dict[str, Any] = {"name": "Alice GmbH", "jurisdiction": "DE", "email": "billing@alice.example"}


async def _manifest(client: Any, org: Org, **constraints: Any) -> None:
    doc = copy.deepcopy(MANIFEST)
    doc["constraints"].update(constraints)
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    r = await client.post(base, json=doc, headers=org.headers)
    assert r.status_code == 201, r.text
    r = await client.post(f"{base}/{r.json()['manifest_id']}/approve", json={}, headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text


def _body(action: dict[str, Any] | None = None, counterparty: dict[str, Any] | None = None,
          token: str | None = None, agent_id: str = AGENT_ID) -> dict[str, Any]:
    body: dict[str, Any] = {"uapk_id": UAPK_ID, "agent_id": agent_id, "action": action or TRANSFER}
    if counterparty is not None:
        body["counterparty"] = counterparty
    if token is not None:
        body["override_token"] = token
    return body


async def _execute(client: Any, key: dict[str, str], **kw: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/gateway/execute", json=_body(**kw), headers=key)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _codes(body: dict[str, Any]) -> list[str]:
    return [r["code"] for r in body["reasons"]]


def _approvals(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/approvals"


async def _agent(client: Any, org: Org) -> dict[str, str]:
    return {"X-API-Key": await make_key(client, org, "agent", uapk_ids=[UAPK_ID])}


async def _approve(client: Any, org: Org, approval_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await client.post(f"{_approvals(org)}/{approval_id}/approve", json={}, headers=headers or org.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- item 3: the token is bound to the whole action ------------------------------------------
async def test_token_for_alice_de_does_not_allow_mallory_ru(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    assert body["decision"] == "escalate", body
    approval_id = body["approval_id"]
    # The approver sees every field the token will be bound to.
    seen = (await client.get(f"{_approvals(org)}/{approval_id}", headers=org.headers)).json()
    assert seen["capability"] == "payments:transfer"
    assert {k: seen["action"][k] for k in TRANSFER} == TRANSFER
    assert {k: v for k, v in seen["counterparty"].items() if v is not None} == ALICE
    listed = (await client.get(_approvals(org), headers=org.headers)).json()["items"]
    assert listed[0]["counterparty"] == seen["counterparty"]
    token = (await _approve(client, org, approval_id))["override_token"]

    for other in (
        {"name": "Mallory Ltd", "jurisdiction": "RU", "email": "billing@alice.example"},
        {**ALICE, "jurisdiction": "RU"},
        {**ALICE, "name": "Mallory Ltd"},
        {**ALICE, "email": "billing@mallory.example"},
        {**ALICE, "domain": "mallory.example"},
        {**ALICE, "id": "cp_666"},
        {"name": "Alice GmbH", "jurisdiction": "DE"},  # a field left out
        None,  # no counterparty at all
    ):
        denied = await _execute(client, agent, counterparty=other, token=token)
        assert denied["decision"] == "deny" and _codes(denied) == ["override_token_action_mismatch"], (other, denied)
    # None of that spent it: the approved action itself is allowed, once. Field order and
    # explicit nulls do not matter.
    reordered = {"jurisdiction": "DE", "id": None, "email": ALICE["email"], "name": ALICE["name"]}
    allowed = await _execute(client, agent, counterparty=reordered, token=token)
    assert allowed["decision"] == "allow" and _codes(allowed) == ["override_token_accepted"], allowed


async def test_changed_description_or_amount_is_refused(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    token = (await _approve(client, org, body["approval_id"]))["override_token"]
    for action in (
        {**TRANSFER, "description": "Invoice 2024-17 (and the rest of the balance)"},
        {k: v for k, v in TRANSFER.items() if k != "description"},
        {**TRANSFER, "amount": 250000.0},
        {**TRANSFER, "currency": "USD"},
        {**TRANSFER, "params": {"iban": "RU0204452560040702810412345678901"}},
    ):
        denied = await _execute(client, agent, action=action, counterparty=ALICE, token=token)
        assert denied["decision"] == "deny" and _codes(denied) == ["override_token_action_mismatch"], (action, denied)
    assert (await _execute(client, agent, counterparty=ALICE, token=token))["decision"] == "allow"


async def test_token_for_transfer_does_not_allow_wire_all_funds(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    token = (await _approve(client, org, body["approval_id"]))["override_token"]
    # Same capability, another type: refused, whether as a bad request (an explicit capability
    # that is not tool:type) or as a token for another action. Never allowed.
    wire = {**TRANSFER, "type": "wire_all_funds", "capability": "payments:transfer"}
    r = await client.post("/api/v1/gateway/execute", json=_body(wire, ALICE, token), headers=agent)
    if r.status_code == 200:
        assert r.json()["decision"] == "deny" and _codes(r.json()) == ["override_token_action_mismatch"], r.json()
    else:
        assert r.status_code == 400, r.text
    # Another tool under the same capability, likewise.
    other_tool = {**TRANSFER, "tool": "treasury", "capability": "payments:transfer"}
    r = await client.post("/api/v1/gateway/execute", json=_body(other_tool, ALICE, token), headers=agent)
    if r.status_code == 200:
        assert r.json()["decision"] == "deny" and _codes(r.json()) == ["override_token_action_mismatch"], r.json()
    else:
        assert r.status_code == 400, r.text
    assert (await _execute(client, agent, counterparty=ALICE, token=token))["decision"] == "allow"


async def test_type_and_tool_are_bound_in_the_pipeline(tmp_path: Any) -> None:
    """Below the HTTP layer's capability rule: same capability, another type or tool."""
    settings = load_settings(env={}, data_dir=tmp_path)
    keys = KeyStore.load_or_create(tmp_path / "keys.json")
    p = Pipeline(MemoryQuotas(), functools.partial(check_override, keys, settings))
    snapshot = ManifestSnapshot(
        manifest_id="m-bot", uapk_id="bot", manifest_hash="sha256:x", version="1.0.0", status="active",
        approved=("payments:transfer",), require_human_approval=("payments:transfer",),
    )
    o = compile_org(OrgPolicySource("org-1", 1, (snapshot,), ()), default_per_hour=100, default_per_day=100)
    token, _, _ = issue_override(
        keys, settings, approval_id="appr-1", org_id="org-1", uapk_id="bot", agent_id="agent-1",
        capability="payments:transfer", tool="payments", type="transfer", params={}, amount=None, currency=None,
    )

    def req(tool: str, type_: str) -> GatewayActionRequest:
        return msgspec.convert({"uapk_id": "bot", "agent_id": "agent-1", "override_token": token,
                                "action": {"tool": tool, "type": type_}}, GatewayActionRequest)

    for tool, type_ in (("payments", "wire_all_funds"), ("treasury", "transfer")):
        d = await p.decide(req(tool, type_), o, spend=False, capability="payments:transfer")
        assert d.decision == "deny" and d.reasons[0].code == "override_token_action_mismatch", (tool, type_, d.reasons)
    d = await p.decide(req("payments", "transfer"), o, spend=False, capability="payments:transfer")
    assert d.decision == "allow" and d.reasons[0].code == "override_token_accepted", d.reasons
