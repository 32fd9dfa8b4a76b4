"""What a real server writes down: its log (stdout) and its database.

* Log injection: newlines, ANSI escapes and quotes in every field a request controls (path,
  request id, headers, bodies, ids) still give exactly one well-formed JSON log line per
  request, with no raw control character anywhere in the log.
* No secret in clear: after a scripted session (bootstrap, login, keys, a revoked key,
  a capability token, an escalation approved with an override token) neither any table of the
  database nor the captured log contains an API key, a password or a token.
"""
from __future__ import annotations

import asyncio
import json
import socket
import uuid

import asyncpg
import httpx

from tests.faults.helpers import action_body, setup_agent
from tests.faults.procs import BOOT_PASSWORD, BastionServer

HOSTILE = ["\n", "\r\n", "\x1b[31m", '"}{"level":"CRITICAL"', "\u2028", "\x00", "\u202e"]


def _raw_request(server: BastionServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


async def test_hostile_fields_still_give_one_json_line_per_request(module_server: BastionServer) -> None:
    server = module_server
    agent = setup_agent(server, "log-bot")
    before = len(server.log_lines())
    sent: list[str] = []  # request ids we chose (sane ones are echoed, hostile ones replaced)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        def rid() -> str:
            sent.append(f"inj-{len(sent)}-{uuid.uuid4().hex[:8]}")
            return sent[-1]

        for h in HOSTILE:
            enc = "".join(f"%{b:02X}" for b in h.encode())
            # An unknown path, a path parameter, a query string: all carry the hostile text.
            for url in (f"/nope/{enc}/x", f"/api/v1/orgs/{enc}/manifests?status={enc}",
                        f"/api/v1/orgs/{server.org_id}/manifests/{enc}"):
                r = await c.get(url, headers={"X-API-Key": server.owner_key, "X-Request-ID": rid()})
                assert r.status_code in (400, 404), (url, r.status_code, r.text)
            bodies = [
                ("/api/v1/gateway/execute", action_body("log-bot", agent_id=f"a{h}"), agent["agent_key"]),
                ("/api/v1/gateway/execute", action_body(f"log{h}bot"), agent["agent_key"]),
                ("/api/v1/gateway/execute", {**action_body("log-bot"), "context": {f"k{h}": h}}, agent["agent_key"]),
                ("/api/v1/auth/login", {"email": f"x{h}@acme.com", "password": h * 8}, None),
                (f"/api/v1/orgs/{server.org_id}/api-keys", {"name": f"k{h}", "role": "agent"}, server.owner_key),
            ]
            for url, body, key in bodies:
                headers = {"X-Request-ID": rid(), **({"X-API-Key": key} if key else {})}
                r = await c.post(url, json=body, headers=headers)
                assert r.status_code < 500, (url, r.status_code, r.text)
            # Hostile credentials.
            r = await c.get(f"/api/v1/orgs/{server.org_id}", headers={"X-API-Key": f"bst_{enc}",
                                                                      "Authorization": f"Bearer {enc}"})
            assert r.status_code == 401
    # Raw bytes no client library would send: control characters in header values and path.
    raw_requests = [
        b"GET /x\x1b[31m HTTP/1.1\r\nHost: a\r\nX-Request-ID: evil\x1b[2J\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Request-ID: ok\x00bad\r\nX-API-Key: bst_\x1b[31m\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/orgs/%0a%1b/manifests HTTP/1.1\r\nHost: a\r\nUser-Agent: \x1b]0;pwned\x07\r\nConnection: close\r\n\r\n",
    ]
    for raw in raw_requests:
        await asyncio.to_thread(_raw_request, server, raw)
    await asyncio.sleep(0.5)  # let the last log lines flush

    lines = server.log_lines()[before:]
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x00" not in text and "\u2028" not in text and "\u202e" not in text
    records = []
    for line in lines:
        rec = json.loads(line)  # every line is one JSON object
        assert isinstance(rec, dict) and "level" in rec and "msg" in rec, line
        records.append(rec)
    access = [r for r in records if r.get("logger") == "bastion.access"]
    assert len(access) >= len(HOSTILE) * 9
    assert len({r["request_id"] for r in access}) == len(access)  # one line per request
    assert set(sent) <= {r["request_id"] for r in access}  # sane client ids are kept
    # Forged fields did not become fields.
    assert all(r.get("level") != "CRITICAL" for r in records)


async def _dump_database(url: str) -> str:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        out = []
        for t in tables:
            for row in await conn.fetch(f'SELECT row_to_json(x)::text AS j FROM "{t}" x'):
                out.append(f"{t}: {row['j']}")
        return "\n".join(out)
    finally:
        await conn.close()


async def test_no_secret_in_clear_in_the_database_or_the_logs(module_server: BastionServer) -> None:
    server = module_server
    secrets: dict[str, str] = {"owner key": server.owner_key, "bootstrap password": BOOT_PASSWORD}
    agent = setup_agent(server, "secret-bot", human=["stripe:refund"])
    secrets["agent key"], secrets["approver key"] = agent["agent_key"], agent["approver_key"]
    base = f"/api/v1/orgs/{server.org_id}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as c:
        owner = {"X-API-Key": server.owner_key}
        # A member with a password, and their session token.
        member_pw = "member-pass-" + uuid.uuid4().hex[:10]
        r = await c.post(f"{base}/users", json={"email": "member@acme.com", "role": "viewer", "password": member_pw},
                         headers=owner)
        assert r.status_code == 202, r.text
        invitation_id = r.json()["invitation_id"]
        secrets["member password"] = member_pw
        r = await c.post("/api/v1/auth/login", json={"email": "member@acme.com", "password": member_pw})
        assert r.status_code == 200, r.text
        secrets["session token"] = r.json()["access_token"]
        r = await c.post(f"/api/v1/invitations/{invitation_id}/accept",
                         headers={"Authorization": f"Bearer {secrets['session token']}"})
        assert r.status_code == 200, r.text
        r = await c.get(f"{base}/manifests", headers={"Authorization": f"Bearer {secrets['session token']}"})
        assert r.status_code == 200, r.text
        # A failed login with a password that is not anyone's.
        wrong = "wrong-pass-" + uuid.uuid4().hex[:10]
        r = await c.post("/api/v1/auth/login", json={"email": "member@acme.com", "password": wrong})
        assert r.status_code == 401
        secrets["wrong password"] = wrong
        # A key, used, then revoked, then refused.
        r = await c.post(f"{base}/api-keys", json={"name": "temp", "role": "viewer"}, headers=owner)
        temp = r.json()
        secrets["revoked key"] = temp["key"]
        assert (await c.get(f"{base}/manifests", headers={"X-API-Key": temp["key"]})).status_code == 200
        assert (await c.post(f"{base}/api-keys/{temp['id']}/revoke", headers=owner)).status_code == 200
        assert (await c.get(f"{base}/manifests", headers={"X-API-Key": temp["key"]})).status_code == 401
        # A capability token, used at the gateway.
        r = await c.post("/api/v1/gateway/tokens", json={"uapk_id": "secret-bot", "agent_id": "agent-1",
                                                        "capabilities": ["email:send"]},
                         headers={"X-API-Key": agent["agent_key"]})
        assert r.status_code == 201, r.text
        secrets["capability token"] = r.json()["token"]
        r = await c.post("/api/v1/gateway/execute",
                         json={**action_body("secret-bot"), "capability_token": secrets["capability token"]},
                         headers={"X-API-Key": agent["agent_key"]})
        assert r.status_code == 200, r.text
        # An escalation, approved: the override token, used once.
        body = action_body("secret-bot", tool="stripe", type="refund", amount=10.0, currency="EUR")
        r = await c.post("/api/v1/gateway/execute", json=body, headers={"X-API-Key": agent["agent_key"]})
        approval_id = r.json()["approval_id"]
        r = await c.post(f"{base}/approvals/{approval_id}/approve", json={}, headers={"X-API-Key": agent["approver_key"]})
        assert r.status_code == 200, r.text
        override = r.json()["override_token"]
        r = await c.post("/api/v1/gateway/execute", json={**body, "override_token": override},
                         headers={"X-API-Key": agent["agent_key"]})
        assert r.json()["decision"] == "allow", r.text
        secrets["override token (used)"] = override
    await asyncio.sleep(0.5)

    dump = await _dump_database(server.env["BASTION_DATABASE_URL"])
    # Log records only: the one-time BASTION_BOOTSTRAP_* result line (no "level") prints the
    # first owner key on purpose, like ``bastion bootstrap`` does (SECURITY.md says so).
    logs = "\n".join(line for line in server.log_lines() if '"level"' in line)
    assert not any("bootstrap" in line for line in logs.splitlines())
    assert len(dump) > 1000 and len(logs) > 1000
    found = {}
    for what, value in secrets.items():
        # The whole secret, and its distinctive tail (a truncated copy is a leak too).
        for needle in {value, value[-20:]}:
            if needle in dump:
                found[f"{what} in the database"] = needle[:12] + "..."
            if needle in logs:
                found[f"{what} in the logs"] = needle[:12] + "..."
    assert not found, found

