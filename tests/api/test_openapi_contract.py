"""The OpenAPI document (``/schema/openapi.json``) is the API's contract: every write
operation documents its request body, every request schema refuses unknown fields, query
parameters are listed, and the server refuses what the document rules out (the schemathesis
run in tests/faults/test_schemathesis.py fuzzes every operation against it)."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Org, assert_error

WRITE = ("post", "put", "patch")
REF = "#/components/schemas/"


@pytest.fixture
async def document(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    from bastion.app import create_app
    from core.settings import load_settings

    settings = load_settings(env={}, database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", redis_url=None,
                             data_dir=tmp_path / "data")
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/schema/openapi.json")
        assert r.status_code == 200
        yield r.json()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                yield path, method, op


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return doc["components"]["schemas"][ref[len(REF):]] if isinstance(ref, str) else schema


def _object_schemas(doc: dict[str, Any], schema: Any, seen: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema with named properties reachable from ``schema`` (component name or
    a JSON path for an inline one)."""
    if isinstance(schema, list):
        for s in schema:
            yield from _object_schemas(doc, s, seen)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref[len(REF):]
        if name in seen:
            return
        seen.add(name)
        target = doc["components"]["schemas"][name]
        if "properties" in target:
            yield name, target
        yield from _object_schemas(doc, target, seen)
        return
    if "properties" in schema:
        yield f"inline:{sorted(schema['properties'])}", schema
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            for v in value.values():
                yield from _object_schemas(doc, v, seen)
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "not"):
            yield from _object_schemas(doc, value, seen)


async def test_every_write_operation_documents_its_request_body(document: dict[str, Any]) -> None:
    missing = []
    writes = 0
    for path, method, op in _operations(document):
        if method not in WRITE:
            continue
        writes += 1
        body = op.get("requestBody")
        if not body or "schema" not in body.get("content", {}).get("application/json", {}):
            missing.append(f"{method.upper()} {path}")
    assert writes >= 27
    assert missing == [], missing


async def test_every_request_schema_refuses_unknown_fields(document: dict[str, Any]) -> None:
    open_ended = []
    checked = set()
    for path, method, op in _operations(document):
        body = op.get("requestBody")
        if not body:
            continue
        schema = body["content"]["application/json"]["schema"]
        for name, obj in _object_schemas(document, schema, set()):
            checked.add(name)
            if obj.get("additionalProperties") is not False:
                open_ended.append(f"{method.upper()} {path}: {name}")
    assert open_ended == [], open_ended
    # Spot checks, named in the issue.
    for name in ("LoginRequest", "GatewayActionRequest", "Action", "Counterparty", "ManifestDocument", "ManifestAgent",
                 "ManifestConstraints", "RuleIn", "RuleConditions", "TokenRequest", "NoBody"):
        assert name in checked, name
        assert document["components"]["schemas"][name]["additionalProperties"] is False, name


async def test_the_documented_bodies_are_the_right_ones(document: dict[str, Any]) -> None:
    def body(path: str, method: str = "post") -> dict[str, Any]:
        return document["paths"][path][method]["requestBody"]  # type: ignore[no-any-return]

    def ref(b: dict[str, Any]) -> str:
        return b["content"]["application/json"]["schema"]["$ref"][len(REF):]  # type: ignore[no-any-return]

    org = "/api/v1/orgs/{org_id}"
    expected = {
        ("/api/v1/gateway/evaluate", True): "GatewayActionRequest",
        ("/api/v1/gateway/execute", True): "GatewayActionRequest",
        (f"{org}/policies/explain", True): "GatewayActionRequest",
        (f"{org}/manifests", True): "ManifestDocument",
        (f"{org}/manifests/validate", True): "ManifestDocument",
        (f"{org}/manifests/{{manifest_id}}/approve", False): "ManifestApproveRequest",
        (f"{org}/manifests/{{manifest_id}}/reject", False): "ReasonRequest",
        (f"{org}/manifests/{{manifest_id}}/suspend", False): "ReasonRequest",
        (f"{org}/manifests/{{manifest_id}}/reactivate", False): "NotesRequest",
        (f"{org}/manifests/{{manifest_id}}/revoke", False): "ReasonRequest",
        (f"{org}/policies/rules", True): "RuleIn",
        (f"{org}/policies/shadow", True): "ShadowRequest",
        (f"{org}/policies/test", True): "PolicyTestRequest",
        (f"{org}/policies/shadow/promote", False): "NoBody",
        (f"{org}/policies/versions/{{version}}/rollback", False): "NoBody",
        (f"{org}/capability-tokens/{{token_id}}/revoke", False): "NoBody",
        ("/api/v1/auth/login", True): "LoginRequest",
    }
    for (path, required), name in expected.items():
        b = body(path)
        assert (ref(b), b["required"]) == (name, required), path
    # Patterns are in the ECMA-262 dialect JSON Schema specifies, not Python's \A...\Z.
    text = str(document)
    assert "\\\\A" not in text and "\\\\Z" not in text
    action = document["components"]["schemas"]["GatewayActionRequest"]
    assert action["properties"]["uapk_id"]["pattern"] == "^[a-z0-9][a-z0-9-]{1,62}$"
    assert set(action["required"]) == {"uapk_id", "agent_id", "action"}
    manifest = document["components"]["schemas"]["ManifestDocument"]
    assert set(manifest["required"]) == {"version", "agent", "capabilities"}


async def test_query_parameters_are_documented(document: dict[str, Any]) -> None:
    def params(path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in document["paths"][path]["get"].get("parameters", []) if p["in"] == "query"}

    org = "/api/v1/orgs/{org_id}"
    manifests = params(f"{org}/manifests")
    assert set(manifests) >= {"limit", "offset", "status", "team"}
    assert manifests["limit"]["schema"]["default"] == 50 and manifests["limit"]["schema"]["maximum"] == 100
    assert "active" in manifests["status"]["schema"]["enum"]
    assert set(params(f"{org}/audit/events")) >= {"limit", "offset", "uapk_id", "agent_id", "decision", "kind", "from", "to"}
    assert set(params(f"{org}/audit/export")) >= {"from", "to"}
    assert set(params(f"{org}/approvals")) >= {"limit", "offset", "status", "uapk_id"}
    for path in (f"{org}/policies/versions", f"{org}/policies/shadow/diffs", f"{org}/capability-tokens",
                 f"{org}/approvals", f"{org}/audit/events", f"{org}/users", f"{org}/api-keys", f"{org}/invitations",
                 "/api/v1/orgs", "/api/v1/invitations"):
        p = params(path)
        assert set(p) >= {"limit", "offset"}, path
        assert (p["limit"]["schema"]["minimum"], p["limit"]["schema"]["maximum"], p["limit"]["schema"]["default"]) == (1, 100, 25)
        assert (p["offset"]["schema"]["minimum"], p["offset"]["schema"]["maximum"]) == (0, 10**9)


# --- the server refuses what the document rules out ------------------------------------------
async def test_a_no_body_operation_refuses_fields(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}"
    r = await client.post(f"{base}/policies/shadow/promote", json={"force": True}, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"] == [{"field": "force", "issue": "Unknown field."}]
    r = await client.post(f"{base}/capability-tokens/00000000-0000-0000-0000-000000000000/revoke",
                          json={"reason": "x"}, headers=org.headers)
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [{"field": "reason", "issue": "Unknown field."}]
    # No body, or {}, as documented.
    r = await client.post(f"{base}/policies/shadow/promote", headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")  # nothing deployed: the body was fine
    r = await client.post(f"{base}/policies/shadow/promote", json={}, headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")


async def test_typed_bodies_are_decoded_strictly(client: Any, org: Org) -> None:
    """A number sent as a string is refused, as the document says (Litestar's own conversion
    would have taken "60" for 60)."""
    from tests.gateway.factories import add_manifest

    await add_manifest(client.app.state.runtime, org.org_id, "billing-bot", approved=["crm:read"])
    url = f"/api/v1/orgs/{org.org_id}/capability-tokens"
    good = {"uapk_id": "billing-bot", "agent_id": "a-1", "capabilities": ["crm:read"], "expires_in_seconds": 60}
    r = await client.post(url, json={**good, "expires_in_seconds": "60"}, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["expires_in_seconds"]
    assert body["details"][0]["issue"].endswith("not a string.")
    r = await client.post(url, json=good, headers=org.headers)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("params,field", [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "x"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"offset": "1000000001"}, "offset"),
    ({"status": "paused"}, "status"), ({"team": "t" * 201}, "team"),
])
async def test_documented_query_parameters_are_enforced(client: Any, org: Org, params: dict[str, str],
                                                        field: str) -> None:
    r = await client.get(f"/api/v1/orgs/{org.org_id}/manifests", params=params, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == [field]
    assert not re.search(r"`|msgspec|Expected `", str(body["details"]))
