"""Which changes make another process reload an org (issue 12, typed change bus).

Two apps, each with its own engine, on one PostgreSQL and one Redis (what two processes
share). SQL is counted on B's engine (``before_cursor_execute``) while A spends an override
token and revokes a capability token: B learns both through the bus and runs no statement of
an org load. A manifest change still reloads B at once. Before the typed bus, both of the first
two reloaded the org in every process."""
from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import jwt
import pytest
from sqlalchemy import event

from tests.conftest import bootstrap_org, make_key, serve_app
from tests.gateway.factories import set_status
from tests.timing import limit

UAPK_ID = "refund-bot"
MANIFEST: dict[str, Any] = {
    "version": "1.0",
    "agent": {"id": UAPK_ID, "name": "Refund Bot", "version": "1.0.0"},
    "capabilities": {"requested": ["crm:read", "stripe:refund"]},
    "constraints": {"max_actions_per_hour": 100, "max_actions_per_day": 1000, "require_human_approval": ["stripe:refund"]},
}
READ: dict[str, Any] = {"type": "read", "tool": "crm", "params": {}}
REFUND: dict[str, Any] = {"type": "refund", "tool": "stripe", "params": {"charge_id": "ch_1"}, "amount": 15.0,
                          "currency": "EUR"}
# The tables an org load reads (store.gateway_state, store.policy_rules).
LOAD_TABLES = re.compile(r"\b(manifests|policy_rules|policy_versions)\b")


class StatementLog:
    """Every statement B's engine runs, from now on."""

    def __init__(self, engine: Any):
        self.engine = engine.sync_engine
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def loads(self) -> list[str]:
        return [s for s in self.statements if LOAD_TABLES.search(s)]

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


async def _until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit(timeout)
    while not predicate():
        assert loop.time() < deadline, f"B never saw {what}"
        await asyncio.sleep(0.01)


def _body(action: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"uapk_id": UAPK_ID, "agent_id": "agent-1", "action": action, **extra}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_override_use_and_token_revocation_reload_nothing_in_another_process(settings: Any) -> None:
    from bastion.app import create_app
    from store.api_keys import hash_key

    app_a, app_b = create_app(settings), create_app(settings)
    async with serve_app(app_a) as a, serve_app(app_b) as b:
        gw_b = app_b.state.gateway
        await gw_b.state.stop()  # no version poll on B: what B reloads, it reloads for a bus message
        org = await bootstrap_org(app_a)
        base = f"/api/v1/orgs/{org.org_id}"
        r = await a.post(f"{base}/manifests", json=copy.deepcopy(MANIFEST), headers=org.headers)
        assert r.status_code == 201, r.text
        mid = r.json()["manifest_id"]
        r = await a.post(f"{base}/manifests/{mid}/approve", json={}, headers=org.headers)
        assert r.status_code == 200, r.text
        agent = {"X-API-Key": await make_key(a, org, "agent")}
        viewer = await make_key(a, org, "viewer")
        r = await b.post("/api/v1/gateway/evaluate", json=_body(READ), headers=agent)
        assert r.status_code == 200 and r.json()["decision"] == "allow", r.text  # B has the org loaded
        assert (await b.get(base, headers={"X-API-Key": viewer})).status_code == 200  # and the viewer key cached
        viewer_hash = hash_key(app_b.state.runtime.pepper, viewer)
        assert viewer_hash in app_b.state.authenticator._cache

        # An override token, approved on A; a capability token issued on A.
        r = await a.post("/api/v1/gateway/execute", json=_body(REFUND), headers=agent)
        assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text
        r = await a.post(f"{base}/approvals/{r.json()['approval_id']}/approve", json={}, headers=org.headers)
        assert r.status_code == 200, r.text
        override = r.json()["override_token"]
        override_jti = jwt.decode(override, options={"verify_signature": False})["jti"]
        r = await a.post("/api/v1/gateway/tokens", json={"uapk_id": UAPK_ID, "agent_id": "agent-1",
                                                         "capabilities": ["crm:read"]}, headers=agent)
        assert r.status_code == 201, r.text
        token_id = r.json()["token_id"]

        loads_before = gw_b.state.loads
        log = StatementLog(app_b.state.runtime.engine)
        try:
            # A spends the override token and revokes the capability token.
            r = await a.post("/api/v1/gateway/execute", json=_body(REFUND, override_token=override), headers=agent)
            assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
            await _until(lambda: override_jti in gw_b.used_overrides, "the spent override")
            r = await a.post(f"{base}/capability-tokens/{token_id}/revoke", headers=org.headers)
            assert r.status_code == 200, r.text
            await _until(lambda: token_id in app_b.state.tokens.revocations, "the revoked token")
            # B handles messages in order: the override's message is behind it.
            assert log.loads() == [], "B reloaded the org for an override use"
            # A marker behind them on the bus (a key revocation, which no version reloads:
            # B's poll is stopped): once B evicted the key, B has handled both messages.
            kid = next(k["id"] for k in (await a.get(f"{base}/api-keys", headers=org.headers)).json()["items"]
                       if k["role"] == "viewer")
            r = await a.post(f"{base}/api-keys/{kid}/revoke", headers=org.headers)
            assert r.status_code == 200, r.text
            await _until(lambda: viewer_hash not in app_b.state.authenticator._cache, "the revoked key")
            await asyncio.sleep(0.1)  # the key message's other listeners, after the key cache's
            assert log.loads() == [], "B reloaded the org for a capability-token revocation"
            assert gw_b.state.loads == loads_before

            # A manifest change still reloads B, through the bus.
            version = await set_status(app_a.state.runtime, org.org_id, mid, "suspended")
            await _until(lambda: (c := gw_b.state.peek(org.org_id)) is not None and c.version >= version,
                         "the manifest change")
            assert gw_b.state.peek(org.org_id).agent(UAPK_ID).status == "suspended"
            assert gw_b.state.loads == loads_before + 1
            assert log.loads(), "the reload reads the org's manifests"
        finally:
            log.close()


async def test_in_process_only_invalidating_messages_reload(client: Any, org: Any) -> None:
    """Each kind on the in-process bus, for a loaded org, at a newer version: exactly the kinds
    that invalidate a compiled org reload it."""
    from store.bus_messages import KINDS, Change
    from tests.gateway.factories import add_manifest

    runtime = client.app.state.runtime
    state = client.app.state.gateway.state
    await add_manifest(runtime, org.org_id, "support-bot")
    compiled = await state.get(org.org_id)
    newer = compiled.version + 1  # the listeners compare versions; no SQL change needed to reload
    samples: list[Change] = [
        kind(**{"org_id": org.org_id, **{f: v for f, v in {
            "version": newer, "uapk_id": "support-bot", "manifest_id": "m", "status": "active", "key_id": "k",
            "key_hash": "h", "jti": f"jti-{kind.__name__}", "exp": 4102444800.0,
        }.items() if f in kind.__struct_fields__}})
        for kind in KINDS
    ]
    reloaded = {}
    for message in samples:
        before = state.loads
        await runtime.bus.publish(message)  # delivered before publish returns
        reloaded[type(message).__name__] = state.loads - before
    assert reloaded == {k.__name__: int(k.invalidates_org) for k in KINDS}
    assert reloaded["ManifestChanged"] == 1 and reloaded["OverrideConsumed"] == 0
