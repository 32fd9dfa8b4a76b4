"""The public UAPK SDK (uapk-gateway 1.0.2), unchanged, against a real Bastion server process.

Starts ``bastion serve`` on a free port (embedded: SQLite, no Redis; and with Redis), bootstraps
an org with ``bastion bootstrap``, registers and approves a manifest over HTTP, creates an agent
key, and drives ``uapk_gateway.UAPKGatewayClient`` over real HTTP: evaluate, execute, a deny,
an escalate, and ``execute_with_retry_on_escalate`` completed by an approver in a background
thread through the human API.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REDIS_URL

uapk_gateway = pytest.importorskip("uapk_gateway")
from uapk_gateway import ActionDeniedError, ActionEscalatedError, UAPKGatewayClient  # noqa: E402
from uapk_gateway.models import ActionInfo, GatewayDecision  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASTION = Path(sys.executable).parent / "bastion"  # the running environment's (the wheel's under make test)
UAPK_ID = "refund-bot"
AGENT_ID = "agent-sdk-1"

MANIFEST: dict[str, Any] = {
    "version": "1.0",
    "agent": {"id": UAPK_ID, "name": "Refund Bot", "version": "1.0.0", "team": "support"},
    "capabilities": {"requested": ["crm:read", "stripe:refund"]},
    "constraints": {
        "max_actions_per_hour": 100,
        "max_actions_per_day": 1000,
        "require_human_approval": ["stripe:refund"],
    },
}
READ = ActionInfo(type="read", tool="crm", params={"customer_id": "c_1"})
REFUND = ActionInfo(type="refund", tool="stripe", params={"charge_id": "ch_1"}, amount=1500.0, currency="EUR")
FORBIDDEN = ActionInfo(type="delete", tool="crm", params={"customer_id": "c_1"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, base_url: str, org_id: str, owner_key: str, proc: subprocess.Popen[bytes], log: Path):
        self.base_url = base_url
        self.org_id = org_id
        self.owner_key = owner_key
        self.proc = proc
        self.log = log

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": key}, timeout=30)


def _env(tmp: Path, port: int, redis: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update(
        BASTION_HOST="127.0.0.1",
        BASTION_PORT=str(port),
        BASTION_DATA_DIR=str(tmp / "data"),
        BASTION_DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'data' / 'bastion.db'}",
        BASTION_LOG_LEVEL="WARNING",
    )
    if redis:
        env["BASTION_REDIS_URL"] = REDIS_URL
    return env


@pytest.fixture(params=["embedded", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    redis = request.param == "redis"
    if redis:
        request.getfixturevalue("redis_url")  # flushes this run's Redis test DB
    port = _free_port()
    env = _env(tmp_path, port, redis)
    boot = subprocess.run(
        [str(BASTION), "bootstrap", "--org-slug", "acme", "--org-name", "Acme",
         "--admin-email", "owner@acme.com", "--admin-password", "owner-pass-123"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert boot.returncode == 0, boot.stderr
    out = json.loads(boot.stdout.strip().splitlines()[-1])
    log = tmp_path / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(BASTION), "serve"], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()}"
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"server did not start: {log.read_text()}"
            time.sleep(0.1)
        yield Server(base_url, out["org_id"], out["api_key"], proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


def _setup_agent(server: Server) -> tuple[str, str]:
    """Register + approve the manifest, create an approver key and an agent key."""
    with server.http(server.owner_key) as owner:
        base = f"/api/v1/orgs/{server.org_id}"
        r = owner.post(f"{base}/manifests", json=MANIFEST)
        assert r.status_code == 201, r.text
        manifest_id = r.json()["manifest_id"]
        r = owner.post(f"{base}/manifests/{manifest_id}/approve", json={"notes": "sdk test"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "active"
        keys = {}
        for role in ("approver", "agent"):
            body: dict[str, Any] = {"name": f"sdk-{role}", "role": role}
            if role == "agent":
                body["uapk_ids"] = [UAPK_ID]
            r = owner.post(f"{base}/api-keys", json=body)
            assert r.status_code == 201, r.text
            keys[role] = r.json()["key"]
    return keys["approver"], keys["agent"]


class Approver(threading.Thread):
    """A human in a background thread: waits for the pending approval, then decides it."""

    def __init__(self, server: Server, key: str, verb: str, seen: set[str]):
        super().__init__(daemon=True)
        self.server, self.key, self.verb, self.seen = server, key, verb, seen
        self.decided: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            base = f"/api/v1/orgs/{self.server.org_id}/approvals"
            with self.server.http(self.key) as http:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    r = http.get(base, params={"status": "pending", "uapk_id": UAPK_ID})
                    assert r.status_code == 200, r.text
                    fresh = [a for a in r.json()["items"] if a["approval_id"] not in self.seen]
                    if fresh:
                        approval = fresh[0]
                        body = {"notes": "looks fine"} if self.verb == "approve" else {"reason": "not today"}
                        r = http.post(f"{base}/{approval['approval_id']}/{self.verb}", json=body)
                        assert r.status_code == 200, r.text
                        self.decided = r.json()
                        return
                    time.sleep(0.2)
                raise AssertionError("no pending approval appeared")
        except BaseException as exc:  # reported to the test thread
            self.error = exc


def test_unchanged_sdk_against_a_real_server(server: Server) -> None:
    approver_key, agent_key = _setup_agent(server)
    client = UAPKGatewayClient(base_url=server.base_url, api_key=agent_key, max_retries=0)
    try:
        # evaluate: a dry run.
        ev = client.evaluate(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=READ)
        assert ev.decision == GatewayDecision.ALLOW and ev.interaction_id
        ev = client.evaluate(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=REFUND)
        assert ev.decision == GatewayDecision.ESCALATE

        # execute: allowed.
        ex = client.execute(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=READ)
        assert ex.decision == GatewayDecision.ALLOW

        # A capability the manifest does not grant: ActionDeniedError.
        with pytest.raises(ActionDeniedError) as denied:
            client.execute(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=FORBIDDEN)
        assert any(r["code"] == "capability_not_granted" for r in denied.value.reasons)

        # An escalation: the approval id comes back, the SDK can poll it.
        with pytest.raises(ActionEscalatedError) as escalated:
            client.execute(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=REFUND, raise_on_escalate=True)
        first_approval = escalated.value.approval_id
        assert first_approval
        status = client.get_approval_status(first_approval)
        assert status["status"] == "PENDING" and status["override_token"] is None
        # The retry below repeats this very action while it is pending: it joins this approval.
        seen: set[str] = set()

        # execute_with_retry_on_escalate, approved by a human meanwhile.
        human = Approver(server, approver_key, "approve", seen)
        human.start()
        result = client.execute_with_retry_on_escalate(
            uapk_id=UAPK_ID, agent_id=AGENT_ID, action=REFUND, poll_interval=1, max_wait=60,
        )
        human.join(timeout=60)
        assert human.error is None, human.error
        assert human.decided is not None and human.decided["status"] == "APPROVED"
        assert result.decision == GatewayDecision.ALLOW
        assert [r.code for r in result.reasons] == ["override_token_accepted"]
        approved_id = human.decided["approval_id"]
        assert approved_id == first_approval
        seen.add(approved_id)

        # The token was single-use: presenting it again is denied.
        token = human.decided["override_token"]
        with pytest.raises(ActionDeniedError) as reused:
            client.execute(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=REFUND, override_token=token)
        assert [r["code"] for r in reused.value.reasons] == ["override_token_already_used"]
        # And on another action it is a mismatch.
        other = ActionInfo(type="refund", tool="stripe", params={"charge_id": "ch_2"}, amount=1500.0, currency="EUR")
        with pytest.raises(ActionDeniedError) as mismatch:
            client.execute(uapk_id=UAPK_ID, agent_id=AGENT_ID, action=other, override_token=token)
        assert [r["code"] for r in mismatch.value.reasons] == ["override_token_action_mismatch"]

        # execute_with_retry_on_escalate, denied by a human: the SDK raises ActionDeniedError.
        human = Approver(server, approver_key, "deny", seen)
        human.start()
        with pytest.raises(ActionDeniedError, match="Approval was denied"):
            client.execute_with_retry_on_escalate(
                uapk_id=UAPK_ID, agent_id=AGENT_ID, action=REFUND, poll_interval=1, max_wait=60,
            )
        human.join(timeout=60)
        assert human.error is None, human.error
        assert client.get_approval_status(human.decided["approval_id"])["status"] == "DENIED"  # type: ignore[index]
    finally:
        client.close()
    assert server.proc.poll() is None, server.log.read_text()


async def test_unchanged_async_sdk_retry_on_escalate(server: Server) -> None:
    from uapk_gateway import AsyncUAPKGatewayClient

    approver_key, agent_key = _setup_agent(server)
    async with AsyncUAPKGatewayClient(base_url=server.base_url, api_key=agent_key, max_retries=0) as client:
        human = Approver(server, approver_key, "approve", set())
        human.start()
        result = await client.execute_with_retry_on_escalate(
            uapk_id=UAPK_ID, agent_id=AGENT_ID, action=REFUND, poll_interval=1, max_wait=60,
        )
        human.join(timeout=60)
        assert human.error is None, human.error
        assert result.decision == GatewayDecision.ALLOW
        assert [r.code for r in result.reasons] == ["override_token_accepted"]
        # The use is recorded off the response path: the poll stops showing the token soon after.
        for _ in range(100):
            status = await client.get_approval_status(human.decided["approval_id"])  # type: ignore[index]
            assert status["status"] == "APPROVED"
            if status["override_token"] is None:
                break
            await asyncio.sleep(0.1)
        assert status["override_token"] is None
