"""Request ids, access logs, pagination and the OpenAPI document."""
from __future__ import annotations

import io
import json
import logging
import uuid
from typing import Any

import pytest

from tests.conftest import Org, assert_error, make_key


# --- request ids -------------------------------------------------------------------------
async def test_request_id_is_echoed_when_sane(client: Any, org: Org) -> None:
    rid = "trace-" + uuid.uuid4().hex
    r = await client.get(f"/api/v1/orgs/{org.org_id}", headers={**org.headers, "X-Request-ID": rid})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    r = await client.get("/nowhere", headers={"X-Request-ID": rid})
    assert assert_error(r, 404, "NOT_FOUND")["request_id"] == rid


async def test_request_id_is_generated_when_absent(client: Any) -> None:
    r1 = await client.get("/healthz")
    r2 = await client.get("/healthz")
    uuid.UUID(r1.headers["x-request-id"])
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


@pytest.mark.parametrize(
    "bad",
    ["x" * 129, "has space", "line\nbreak", "esc\x1b[31mred", "", "semi;colon", "quote\"s"],
)
async def test_insane_request_ids_are_replaced(client: Any, bad: str) -> None:
    r = await client.get("/nowhere", headers=[("X-Request-ID", bad.encode("latin-1"))])
    body = assert_error(r, 404, "NOT_FOUND")
    rid = r.headers["x-request-id"]
    assert rid != bad
    uuid.UUID(rid)
    assert body["request_id"] == rid


async def test_request_id_of_exactly_128_chars_is_kept(client: Any) -> None:
    rid = "a" * 128
    r = await client.get("/healthz", headers={"X-Request-ID": rid})
    assert r.headers["x-request-id"] == rid


# --- access log --------------------------------------------------------------------------
async def test_one_json_access_line_per_request(client: Any, org: Org) -> None:
    from httpkit.context import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bastion.access")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        r1 = await client.get(f"/api/v1/orgs/{org.org_id}", headers={**org.headers, "X-Request-ID": "req-one"})
        r2 = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"bad": 1}, headers=org.headers)
        r3 = await client.get("/healthz")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    recs = [json.loads(line) for line in lines]
    first, second, third = recs
    assert first["request_id"] == "req-one" == r1.headers["x-request-id"]
    assert first["org_id"] == org.org_id
    assert first["route"] == "/api/v1/orgs/{org_id}"  # the route template, not the raw path
    assert first["method"] == "GET"
    assert first["status"] == 200
    assert isinstance(first["duration_ms"], (int, float)) and first["duration_ms"] >= 0
    assert first["logger"] == "bastion.access" and first["level"] == "INFO"
    assert second["status"] == 400 and second["request_id"] == r2.json()["request_id"]
    assert second["org_id"] == org.org_id
    assert third["route"] == "/healthz" and third["org_id"] is None and third["request_id"] == r3.headers["x-request-id"]


async def test_hostile_path_and_request_id_still_give_one_well_formed_line(client: Any) -> None:
    from httpkit.context import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bastion.access")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    hostile_path = "/x\n{\"forged\": true}\x1b[31m\r\u2028end"
    try:
        # Send raw bytes in the path (the ASGI path is decoded text) and in the header.
        r = await client.request(
            "GET", "http://testserver/x%0A%7B%22forged%22%3A%20true%7D%1B%5B31m%0D%E2%80%A8end",
            headers=[("X-Request-ID", b"id\x1b[2J\nforged")],
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert_error(r, 404, "NOT_FOUND")
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n"), repr(out)
    assert "\x1b" not in out and "\r" not in out and "\u2028" not in out
    rec = json.loads(out)
    assert rec["route"] == hostile_path
    assert rec["request_id"] == r.headers["x-request-id"] != "id\x1b[2J\nforged"
    assert "forged" not in rec


def test_json_formatter_escapes_control_characters_in_every_field() -> None:
    from httpkit.context import JsonFormatter

    record = logging.LogRecord("bastion.access", logging.INFO, __file__, 1, "msg\nwith\x1b[0m", None, None)
    record.fields = {"route": "/a\nb", "weird": "\x00\x07\u2029"}
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line and "\u2029" not in line
    rec = json.loads(line)
    assert rec["msg"] == "msg\nwith\x1b[0m" and rec["route"] == "/a\nb"


def test_configure_logging_writes_json_lines_to_the_given_stream() -> None:
    from httpkit.context import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        configure_logging("INFO", stream)
        logging.getLogger("bastion.test").info("hello", extra={"fields": {"k": "v"}})
    finally:
        root.handlers[:], _ = saved[0], None
        root.setLevel(saved[1])
    rec = json.loads(stream.getvalue().strip())
    assert rec["msg"] == "hello" and rec["k"] == "v" and rec["logger"] == "bastion.test"


# --- pagination --------------------------------------------------------------------------
async def test_list_responses_carry_items_and_total_and_honour_limit_offset(client: Any, org: Org) -> None:
    for i in range(4):
        await make_key(client, org, "viewer", name=f"k{i}")
    url = f"/api/v1/orgs/{org.org_id}/api-keys"
    r = await client.get(url, headers=org.headers)
    body = r.json()
    assert set(body) == {"items", "total"}
    assert body["total"] == 5 and len(body["items"]) == 5  # the bootstrap key + 4
    r = await client.get(url, params={"limit": 2, "offset": 1}, headers=org.headers)
    page = r.json()
    assert page["total"] == 5
    assert [k["id"] for k in page["items"]] == [k["id"] for k in body["items"][1:3]]
    r = await client.get(url, params={"offset": 10}, headers=org.headers)
    assert r.json() == {"items": [], "total": 5}


async def test_default_limit_is_25_and_max_is_100(client: Any, org: Org) -> None:
    from httpkit.pagination import page_params

    assert page_params({}).limit == 25 and page_params({}).offset == 0
    assert page_params({"limit": "100"}).limit == 100
    url = f"/api/v1/orgs/{org.org_id}/users"
    r = await client.get(url, params={"limit": 100}, headers=org.headers)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "params,field",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"offset": "-5"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": "99999999999"}, "offset"),
    ],
)
async def test_bad_pagination_is_400(client: Any, org: Org, params: dict[str, str], field: str) -> None:
    for url in (f"/api/v1/orgs/{org.org_id}/api-keys", f"/api/v1/orgs/{org.org_id}/users", "/api/v1/orgs"):
        r = await client.get(url, params=params, headers=org.headers)
        body = assert_error(r, 400, "VALIDATION_ERROR")
        assert [d["field"] for d in body["details"]] == [field]


# --- OpenAPI -----------------------------------------------------------------------------
ACCOUNT_PATHS = {
    "/api/v1/auth/login": {"post"},
    "/api/v1/orgs": {"get", "post"},
    "/api/v1/orgs/{org_id}": {"get"},
    "/api/v1/orgs/{org_id}/users": {"get", "post"},
    "/api/v1/orgs/{org_id}/users/{user_id}": {"patch", "delete"},
    "/api/v1/orgs/{org_id}/api-keys": {"get", "post"},
    "/api/v1/orgs/{org_id}/api-keys/{key_id}/revoke": {"post"},
}


async def test_openapi_document_is_served_and_lists_the_accounts_paths(client: Any) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = json.loads(r.text)
    assert doc["openapi"].startswith("3.")
    for path, methods in ACCOUNT_PATHS.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), (path, doc["paths"][path].keys())
    assert "/healthz" in doc["paths"] and "/readyz" in doc["paths"]
    r = await client.get("/schema")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]


async def test_openapi_documents_the_error_body(client: Any) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    err = schemas["ErrorBody"]
    assert set(err["required"]) == {"code", "message", "details", "request_id"}
    detail = schemas["ErrorDetail"]
    assert set(detail["required"]) == {"field", "issue"}
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    create_key = doc["paths"]["/api/v1/orgs/{org_id}/api-keys"]["post"]["responses"]
    for status in ("400", "401", "403", "404", "409", "413", "429"):
        assert create_key[status]["content"]["application/json"]["schema"] == ref, status
    assert create_key["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ApiKeyCreated"}
    org_create = doc["paths"]["/api/v1/orgs"]["post"]["responses"]
    assert org_create["409"]["content"]["application/json"]["schema"] == ref
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    assert set(login["responses"]) >= {"200", "400", "401", "429"}
    assert login["security"] == [{}]
    # Litestar's own {status_code, detail} shape must not appear anywhere.
    assert '"status_code"' not in json.dumps(doc["paths"])


async def test_openapi_request_schemas_match_what_the_server_accepts(client: Any) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    create = schemas["ApiKeyCreate"]
    assert set(create["required"]) == {"name", "role"}
    assert set(create["properties"]) == {"name", "role", "uapk_ids"}
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "description": "An organization API key (bst_...).", "name": "X-API-Key", "in": "header",
    }
    assert doc["components"]["securitySchemes"]["Session"]["scheme"] == "bearer"


def _conforms(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """A small structural check of a JSON value against an OpenAPI schema: required fields
    present, no undocumented fields, types of nested objects and arrays."""
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if "oneOf" in schema or "anyOf" in schema:
        options = schema.get("oneOf") or schema.get("anyOf")
        errors = []
        for option in options:
            try:
                _conforms(doc, option, value, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: matches no option: {errors}")
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    if value is None:
        assert not types or "null" in types, f"{where}: null not allowed"
        return
    if isinstance(value, dict):
        assert not types or "object" in types, f"{where}: object not allowed"
        props = schema.get("properties", {})
        missing = set(schema.get("required", [])) - set(value)
        assert not missing, f"{where}: missing {missing}"
        extra = set(value) - set(props)
        if props or schema.get("additionalProperties") is False:
            assert not extra, f"{where}: undocumented {extra}"
        for k, v in value.items():
            if k in props:
                _conforms(doc, props[k], v, f"{where}.{k}")
    elif isinstance(value, list):
        assert not types or "array" in types, f"{where}: array not allowed"
        for i, item in enumerate(value):
            _conforms(doc, schema.get("items", {}), item, f"{where}[{i}]")
    elif isinstance(value, bool):
        assert not types or "boolean" in types, f"{where}: boolean"
    elif isinstance(value, int):
        assert not types or {"integer", "number"} & set(types), f"{where}: integer"
    elif isinstance(value, str):
        assert not types or "string" in types, f"{where}: string"


async def test_real_responses_conform_to_the_openapi_document(client: Any, org: Org) -> None:
    doc = (await client.get("/schema/openapi.json")).json()

    def check(path: str, method: str, r: Any) -> None:
        spec = doc["paths"][path][method]["responses"][str(r.status_code)]
        content = spec.get("content")
        if r.status_code == 204:
            assert not content and r.content == b""
            return
        _conforms(doc, content["application/json"]["schema"], r.json())

    base = f"/api/v1/orgs/{org.org_id}"
    check("/api/v1/auth/login", "post", await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password}))
    check("/api/v1/auth/login", "post", await client.post("/api/v1/auth/login", json={"email": org.email, "password": "nope-nope"}))
    check("/api/v1/auth/login", "post", await client.post("/api/v1/auth/login", json={"email": 1}))
    check("/api/v1/orgs", "get", await client.get("/api/v1/orgs", headers=org.headers))
    check("/api/v1/orgs/{org_id}", "get", await client.get(base, headers=org.headers))
    check("/api/v1/orgs/{org_id}", "get", await client.get(base))
    r = await client.post(f"{base}/api-keys", json={"name": "a", "role": "agent", "uapk_ids": ["bot-a"]}, headers=org.headers)
    check("/api/v1/orgs/{org_id}/api-keys", "post", r)
    key_id = r.json()["id"]
    check("/api/v1/orgs/{org_id}/api-keys", "post", await client.post(f"{base}/api-keys", json={"name": "a"}, headers=org.headers))
    check("/api/v1/orgs/{org_id}/api-keys", "get", await client.get(f"{base}/api-keys", headers=org.headers))
    check("/api/v1/orgs/{org_id}/api-keys/{key_id}/revoke", "post", await client.post(f"{base}/api-keys/{key_id}/revoke", headers=org.headers))
    r = await client.post(f"{base}/users", json={"email": "u@acme.com", "password": "pass-word-1", "role": "viewer"}, headers=org.headers)
    check("/api/v1/orgs/{org_id}/users", "post", r)
    check("/api/v1/orgs/{org_id}/users", "post", await client.post(f"{base}/users", json={"email": "u@acme.com", "password": "pass-word-1", "role": "viewer"}, headers=org.headers))
    check("/api/v1/orgs/{org_id}/invitations", "get", await client.get(f"{base}/invitations", headers=org.headers))
    session = {"Authorization": "Bearer " + (await client.post("/api/v1/auth/login", json={"email": "u@acme.com", "password": "pass-word-1"})).json()["access_token"]}
    check("/api/v1/invitations", "get", await client.get("/api/v1/invitations", headers=session))
    inv = r.json()["invitation_id"]
    check("/api/v1/invitations/{invitation_id}/accept", "post", await client.post(f"/api/v1/invitations/{inv}/accept", headers=session))
    check("/api/v1/invitations/{invitation_id}/accept", "post", await client.post(f"/api/v1/invitations/{inv}/accept", headers=session))
    uid = next(m["user_id"] for m in (await client.get(f"{base}/users", headers=org.headers)).json()["items"] if m["email"] == "u@acme.com")
    check("/api/v1/orgs/{org_id}/users", "get", await client.get(f"{base}/users", headers=org.headers))
    check("/api/v1/orgs/{org_id}/users/{user_id}", "patch", await client.patch(f"{base}/users/{uid}", json={"role": "approver"}, headers=org.headers))
    check("/api/v1/orgs/{org_id}/users/{user_id}", "patch", await client.patch(f"{base}/users/{org.user_id}", json={"role": "viewer"}, headers=org.headers))
    check("/api/v1/orgs/{org_id}/users/{user_id}", "delete", await client.delete(f"{base}/users/{uid}", headers=org.headers))
    check("/healthz", "get", await client.get("/healthz"))
    check("/readyz", "get", await client.get("/readyz"))
    # The checker itself notices a missing or an undocumented field.
    err = {"$ref": "#/components/schemas/ErrorBody"}
    with pytest.raises(AssertionError):
        _conforms(doc, err, {"code": "X", "message": "m", "details": []})
    with pytest.raises(AssertionError):
        _conforms(doc, err, {"code": "X", "message": "m", "details": [], "request_id": "r", "extra": 1})
