"""The connectors API (issue 14) on both backends: registration, secrets at rest, capability
collisions, validation, admission and bindings."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import Client, Org, assert_error, make_key

SECRET = "Bearer sk-live-TOPSECRET-4242"
ENV_SECRET = "ghp_ENVSECRET0000"


def base(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}"


async def register_http_server(client: Client, org: Org, name: str = "crm", **extra: Any) -> dict[str, Any]:
    body = {"name": name, "transport": "streamable_http", "url": "https://mcp.example.com/mcp",
            "headers": {"Authorization": SECRET}, **extra}
    r = await client.post(f"{base(org)}/mcp-servers", json=body, headers=org.headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def changes(client: Client, org: Org) -> list[dict[str, Any]]:
    await client.app.state.audit.flush()
    r = await client.get(f"{base(org)}/audit/events", params={"limit": 100}, headers=org.headers)
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))


async def test_register_mcp_server_secrets_never_leave(client: Client, org: Org, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await register_http_server(client, org, tools=["getUser", "issues.list"])
    stdio = (await client.post(f"{base(org)}/mcp-servers", json={
        "name": "files", "transport": "stdio", "command": "python", "args": ["-m", "files_server"],
        "env": {"GITHUB_TOKEN": ENV_SECRET}}, headers=org.headers))
    assert stdio.status_code == 201, stdio.text
    assert server["header_names"] == ["Authorization"] and stdio.json()["env_names"] == ["GITHUB_TOKEN"]
    assert server["capabilities"] == {"getUser": "crm:get_user", "issues.list": "crm:issues_list"}
    assert server["transport"] == "streamable_http" and server["url"] == "https://mcp.example.com/mcp"
    assert server["allow_private_addresses"] is False
    local = await register_http_server(client, org, name="local", url="http://127.0.0.1:8931/mcp",
                                       allow_private_addresses=True)
    assert local["allow_private_addresses"] is True
    await client.delete(f"{base(org)}/mcp-servers/{local['id']}", headers=org.headers)

    # Nothing the API answers holds a value: the POST, the list, the one.
    answers = [json.dumps(server), stdio.text]
    for path in ("/mcp-servers", f"/mcp-servers/{server['id']}", f"/mcp-servers/{stdio.json()['id']}"):
        r = await client.get(f"{base(org)}{path}", headers=org.headers)
        assert r.status_code == 200, r.text
        answers.append(r.text)
    assert (await client.get(f"{base(org)}/mcp-servers", headers=org.headers)).json()["total"] == 2
    for answer in answers:
        assert "TOPSECRET" not in answer and "ENVSECRET" not in answer

    # The database holds no plaintext (raw SQL over every column of the table).
    async with client.app.state.runtime.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM mcp_servers"))).all()
    dump = repr(rows)
    assert "TOPSECRET" not in dump and "ENVSECRET" not in dump and "sk-live" not in dump
    assert all(str(row._mapping["secrets_sealed"]).startswith("bsx1.") for row in rows)

    # The audit events name the headers and variables, never their values.
    events = [e for e in await changes(client, org) if e["kind"] == "mcp_server.registered" and e["details"]["name"] != "local"]
    assert len(events) == 2
    assert events[0]["details"]["header_names"] == ["Authorization"] and events[0]["details"]["server_id"] == server["id"]
    assert events[1]["details"]["env_names"] == ["GITHUB_TOKEN"]
    assert "TOPSECRET" not in json.dumps(events) and "ENVSECRET" not in json.dumps(events)
    # ... and no log line does.
    assert "TOPSECRET" not in caplog.text and "ENVSECRET" not in caplog.text

    # The code that performs a call opens them; with another key set it fails closed.
    from core.secretbox import SecretBox, SecretUnreadable
    from services import connectors as service
    from store.connector_models import McpServer
    from store.secret_keys import key_file

    runtime = client.app.state.runtime
    row = await service.get_row(runtime, McpServer, org.org_id, server["id"])
    assert service.open_secrets(runtime, row) == {"headers": {"Authorization": SECRET}, "env": {}}
    other = SecretBox({service.box(runtime).active_kid: b"\x00" * 32}, service.box(runtime).active_kid)
    with pytest.raises(SecretUnreadable):
        other.open(row.secrets_sealed or "", b"bastion-connector-secrets:mcp_server:" + f"{org.org_id}:{row.id}".encode())
    assert key_file(runtime.settings).exists()


async def test_http_connector_registration_and_defaults(client: Client, org: Org) -> None:
    r = await client.post(f"{base(org)}/http-connectors", json={
        "name": "billing", "method": "POST", "url_template": "https://API.billing.example.com/v1/invoices/{invoice_id}",
        "headers": {"X-Api-Token": SECRET}}, headers=org.headers)
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["allowed_hosts"] == ["api.billing.example.com"]  # the template's host by default
    assert (c["connect_timeout_ms"], c["total_timeout_ms"], c["max_response_bytes"]) == (3000, 10000, 1048576)
    assert c["allow_private_addresses"] is False and c["header_names"] == ["X-Api-Token"]
    assert "TOPSECRET" not in r.text
    got = await client.get(f"{base(org)}/http-connectors/{c['id']}", headers=org.headers)
    assert got.json() == c
    async with client.app.state.runtime.engine.connect() as conn:
        dump = repr((await conn.execute(text("SELECT * FROM http_connectors"))).all())
    assert "TOPSECRET" not in dump
    events = [e for e in await changes(client, org) if e["kind"] == "http_connector.registered"]
    assert len(events) == 1 and "TOPSECRET" not in json.dumps(events)
    assert events[0]["details"]["url_template"] == c["url_template"]

    r = await client.post(f"{base(org)}/http-connectors", json={
        "name": "internal", "method": "GET", "url_template": "http://127.0.0.1:9000/q?id={id}",
        "allowed_hosts": ["127.0.0.1", "*.internal.example"], "allow_private_addresses": True,
        "connect_timeout_ms": 100, "total_timeout_ms": 500, "max_response_bytes": 2048}, headers=org.headers)
    assert r.status_code == 201, r.text
    assert r.json()["allowed_hosts"] == ["127.0.0.1", "*.internal.example"] and r.json()["allow_private_addresses"]


@pytest.mark.parametrize(("body", "fields"), [
    ({"name": "Bad Name", "transport": "streamable_http", "url": "https://x.example.com"}, {"name"}),
    ({"name": "a" * 49, "transport": "streamable_http", "url": "https://x.example.com"}, {"name"}),
    ({"name": "crm", "transport": "streamable_http", "url": "ftp://x.example.com"}, {"url"}),
    ({"name": "crm", "transport": "streamable_http", "url": "file:///etc/passwd"}, {"url"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://u:p@x.example.com/"}, {"url"}),
    ({"name": "crm", "transport": "streamable_http"}, {"url"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://x.example.com", "command": "sh"}, {"command"}),
    ({"name": "crm", "transport": "stdio", "command": "   "}, {"command"}),
    ({"name": "crm", "transport": "stdio"}, {"command"}),
    ({"name": "crm", "transport": "stdio", "command": "x", "url": "https://x.example.com"}, {"url"}),
    ({"name": "crm", "transport": "stdio", "command": "x", "args": ["a\u202eb"]}, {"args.0"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://x.example.com",
      "headers": {"Bad Header": "v"}}, {"headers"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://x.example.com",
      "headers": {"X-Token": "a\r\nInjected: 1"}}, {"headers.X-Token"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://x.example.com",
      "headers": {"Host": "evil.example"}}, {"headers.Host"}),
    ({"name": "crm", "transport": "stdio", "command": "x", "env": {"1BAD": "v"}}, {"env"}),
    ({"name": "crm", "transport": "stdio", "command": "x", "allow_private_addresses": True}, {"allow_private_addresses"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://x.example.com",
      "headers": {"X-Token": "caf\u00e9"}}, {"headers.X-Token"}),
    ({"name": "crm", "transport": "streamable_http", "url": "https://x.example.com", "tools": [""]}, {"tools.0"}),
])
async def test_mcp_server_validation(client: Client, org: Org, body: dict[str, Any], fields: set[str]) -> None:
    r = await client.post(f"{base(org)}/mcp-servers", json=body, headers=org.headers)
    err = assert_error(r, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in err["details"]} == fields, err
    assert "Injected" not in r.text  # a secret value is never quoted back


@pytest.mark.parametrize(("body", "fields"), [
    ({"name": "c", "method": "GET", "url_template": "gopher://x.example.com/"}, {"url_template"}),
    ({"name": "c", "method": "GET", "url_template": "https://{host}/x"}, {"url_template"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/{a-b}"}, {"url_template"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/",
      "allowed_hosts": ["https://x.example.com"]}, {"allowed_hosts.0"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/", "allowed_hosts": ["*"]}, {"allowed_hosts.0"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/",
      "allowed_hosts": ["other.example.com"]}, {"allowed_hosts"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/", "connect_timeout_ms": 0}, {"connect_timeout_ms"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/", "connect_timeout_ms": 5000,
      "total_timeout_ms": 1000}, {"connect_timeout_ms"}),
    ({"name": "c", "method": "GET", "url_template": "https://x.example.com/", "max_response_bytes": 10**9},
     {"max_response_bytes"}),
    ({"name": "C!", "method": "GET", "url_template": "https://x.example.com/"}, {"name"}),
])
async def test_http_connector_validation(client: Client, org: Org, body: dict[str, Any], fields: set[str]) -> None:
    r = await client.post(f"{base(org)}/http-connectors", json=body, headers=org.headers)
    err = assert_error(r, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in err["details"]} == fields, err


async def test_typed_bodies_refuse_unknown_fields_and_wrong_enums(client: Client, org: Org) -> None:
    r = await client.post(f"{base(org)}/mcp-servers", json={"name": "crm", "transport": "websocket",
                                                           "url": "https://x.example.com"}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post(f"{base(org)}/http-connectors", json={"name": "c", "method": "TRACE",
                                                             "url_template": "https://x.example.com/"}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post(f"{base(org)}/bindings", json={"capability": "a:b", "extra": 1}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_name_taken_and_tool_collisions_are_409(client: Client, org: Org) -> None:
    await register_http_server(client, org)
    r = await client.post(f"{base(org)}/mcp-servers", json={"name": "crm", "transport": "stdio", "command": "x"},
                          headers=org.headers)
    assert_error(r, 409, "CONFLICT")
    r = await client.post(f"{base(org)}/mcp-servers", json={
        "name": "crm2", "transport": "stdio", "command": "x", "tools": ["get_user", "getUser", "list"]}, headers=org.headers)
    err = assert_error(r, 409, "CONFLICT")
    assert err["details"][0]["field"] == "tools" and "crm2:get_user" in err["details"][0]["issue"]
    assert (await client.get(f"{base(org)}/mcp-servers", headers=org.headers)).json()["total"] == 1
    r = await client.post(f"{base(org)}/http-connectors", json={
        "name": "dup", "method": "GET", "url_template": "https://x.example.com/"}, headers=org.headers)
    assert r.status_code == 201
    r = await client.post(f"{base(org)}/http-connectors", json={
        "name": "dup", "method": "GET", "url_template": "https://x.example.com/"}, headers=org.headers)
    assert_error(r, 409, "CONFLICT")


async def test_bindings(client: Client, org: Org) -> None:
    server = await register_http_server(client, org, name="pay", tools=["sendPayment", "refund"])
    conn = (await client.post(f"{base(org)}/http-connectors", json={
        "name": "crm-api", "method": "GET", "url_template": "https://crm.example.com/c/{id}"}, headers=org.headers)).json()

    # A declared tool's default capability, refined with its argument names.
    r = await client.post(f"{base(org)}/bindings", json={
        "mcp_server_id": server["id"], "tool": "sendPayment", "amount_arg": "amount.value",
        "currency_arg": "amount.currency", "counterparty_arg": "payee"}, headers=org.headers)
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["capability"] == "pay:send_payment" and b["target"] == "mcp" and b["amount_arg"] == "amount.value"
    # Bound once: the second binding of the same capability is a conflict.
    r = await client.post(f"{base(org)}/bindings", json={"mcp_server_id": server["id"], "tool": "sendPayment"},
                          headers=org.headers)
    assert_error(r, 409, "CONFLICT")
    # A declared tool's capability cannot be given to something else.
    r = await client.post(f"{base(org)}/bindings", json={"capability": "pay:refund", "http_connector_id": conn["id"]},
                          headers=org.headers)
    assert_error(r, 409, "CONFLICT")
    r = await client.post(f"{base(org)}/bindings", json={"capability": "crm:read", "http_connector_id": conn["id"]},
                          headers=org.headers)
    assert r.status_code == 201, r.text
    # ... nor may a new server declare a tool whose capability is bound.
    r = await client.post(f"{base(org)}/mcp-servers", json={
        "name": "crm", "transport": "stdio", "command": "x", "tools": ["read"]}, headers=org.headers)
    err = assert_error(r, 409, "CONFLICT")
    assert "crm:read" in err["details"][0]["issue"]
    # A tool the server did not declare, a missing target, bad argument names.
    r = await client.post(f"{base(org)}/bindings", json={"mcp_server_id": server["id"], "tool": "nope"}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post(f"{base(org)}/bindings", json={"capability": "x:y", "http_connector_id": "0" * 8 + "-0000-0000-0000-" + "0" * 12},
                          headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(f"{base(org)}/bindings", json={"capability": "x:*", "http_connector_id": conn["id"],
                                                        "amount_arg": "1bad"}, headers=org.headers)
    err = assert_error(r, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in err["details"]} == {"capability", "amount_arg"}
    r = await client.post(f"{base(org)}/bindings", json={"capability": "x:y"}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")

    listing = (await client.get(f"{base(org)}/bindings", params={"limit": 1}, headers=org.headers)).json()
    assert listing["total"] == 2 and len(listing["items"]) == 1

    # Deleting what a binding names is refused until the binding goes.
    r = await client.delete(f"{base(org)}/mcp-servers/{server['id']}", headers=org.headers)
    err = assert_error(r, 409, "CONFLICT")
    assert err["details"][0]["field"] == "bindings"
    assert (await client.delete(f"{base(org)}/bindings/{b['id']}", headers=org.headers)).status_code == 204
    assert (await client.delete(f"{base(org)}/mcp-servers/{server['id']}", headers=org.headers)).status_code == 204
    assert_error(await client.get(f"{base(org)}/mcp-servers/{server['id']}", headers=org.headers), 404, "NOT_FOUND")
    kinds = [e["kind"] for e in await changes(client, org)]
    assert kinds.count("binding.created") == 2 and "binding.deleted" in kinds and "mcp_server.deleted" in kinds


async def test_admins_only_and_other_orgs_ids_are_404(client: Client, org: Org, other_org: Org) -> None:
    server = await register_http_server(client, org)
    for role in ("viewer", "approver", "policy_author", "agent"):
        key = await make_key(client, org, role)
        r = await client.get(f"{base(org)}/mcp-servers", headers={"X-API-Key": key})
        assert_error(r, 403, "PERMISSION_DENIED")
        r = await client.post(f"{base(org)}/mcp-servers", json={"name": "x"}, headers={"X-API-Key": key})
        assert_error(r, 403, "PERMISSION_DENIED")  # before the body is read
    admin = await make_key(client, org, "admin")
    assert (await client.get(f"{base(org)}/mcp-servers", headers={"X-API-Key": admin})).status_code == 200
    assert_error(await client.get(f"{base(org)}/mcp-servers"), 401, "AUTHENTICATION_REQUIRED")
    # Another organization's id is not found, through its own path or the owner's.
    for path in (f"/mcp-servers/{server['id']}", "/mcp-servers/not-an-id"):
        assert_error(await client.get(f"{base(other_org)}{path}", headers=other_org.headers), 404, "NOT_FOUND")
        assert_error(await client.delete(f"{base(other_org)}{path}", headers=other_org.headers), 404, "NOT_FOUND")
    assert_error(await client.get(f"{base(org)}/mcp-servers", headers=other_org.headers), 404, "NOT_FOUND")
    r = await client.post(f"{base(other_org)}/bindings", json={"mcp_server_id": server["id"], "tool": "t"},
                          headers=other_org.headers)
    assert_error(r, 404, "NOT_FOUND")
    assert (await client.get(f"{base(other_org)}/mcp-servers", headers=other_org.headers)).json()["total"] == 0


async def test_a_change_whose_audit_fails_is_not_made(client: Client, org: Org) -> None:
    from core.errors import ServiceUnavailable

    sink = client.app.state.audit

    async def refuse(*_a: Any, **_k: Any) -> None:
        raise ServiceUnavailable("audit down")

    original = sink.record
    sink.record = refuse
    try:
        r = await client.post(f"{base(org)}/mcp-servers", json={"name": "crm", "transport": "stdio", "command": "x"},
                              headers=org.headers)
        assert_error(r, 503, "SERVICE_UNAVAILABLE")
    finally:
        sink.record = original
    assert (await client.get(f"{base(org)}/mcp-servers", headers=org.headers)).json()["total"] == 0


async def test_pagination_is_validated(client: Client, org: Org) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        assert_error(await client.get(f"{base(org)}/http-connectors", params=params, headers=org.headers),
                     400, "VALIDATION_ERROR")


async def test_connector_delete_and_other_orgs_bindings(client: Client, org: Org, other_org: Org) -> None:
    conn = (await client.post(f"{base(org)}/http-connectors", json={
        "name": "crm-api", "method": "GET", "url_template": "https://crm.example.com/c/{id}"}, headers=org.headers)).json()
    b = (await client.post(f"{base(org)}/bindings", json={"capability": "crm:read", "http_connector_id": conn["id"]},
                           headers=org.headers)).json()
    assert_error(await client.delete(f"{base(org)}/http-connectors/{conn['id']}", headers=org.headers), 409, "CONFLICT")
    for method in (client.get, client.delete):
        assert_error(await method(f"{base(other_org)}/bindings/{b['id']}", headers=other_org.headers), 404, "NOT_FOUND")
        assert_error(await method(f"{base(other_org)}/http-connectors/{conn['id']}", headers=other_org.headers),
                     404, "NOT_FOUND")
    assert (await client.get(f"{base(org)}/bindings/{b['id']}", headers=org.headers)).json() == b
    assert (await client.delete(f"{base(org)}/bindings/{b['id']}", headers=org.headers)).status_code == 204
    assert (await client.delete(f"{base(org)}/http-connectors/{conn['id']}", headers=org.headers)).status_code == 204
    kinds = [e["kind"] for e in await changes(client, org)]
    assert kinds[-4:] == ["http_connector.registered", "binding.created", "binding.deleted", "http_connector.deleted"]


async def test_secrets_sealed_before_a_key_rotation_still_open(client: Client, org: Org) -> None:
    from core.secretbox import SecretBox
    from services import connectors as service
    from store import secret_keys
    from store.connector_models import McpServer

    runtime = client.app.state.runtime
    old = await register_http_server(client, org, name="old")
    new_kid = secret_keys.rotate(secret_keys.key_file(runtime.settings))
    new = await register_http_server(client, org, name="new")
    rows = [await service.get_row(runtime, McpServer, org.org_id, s["id"]) for s in (old, new)]
    assert SecretBox.kid_of(rows[0].secrets_sealed or "") != new_kid == SecretBox.kid_of(rows[1].secrets_sealed or "")
    for row in rows:
        assert service.open_secrets(runtime, row)["headers"] == {"Authorization": SECRET}
