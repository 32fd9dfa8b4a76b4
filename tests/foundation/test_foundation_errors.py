"""The error body, on every error: the framework's own and the handlers'."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import Org, assert_error, serve_app


def keys_url(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/api-keys"


def raw(org: Org) -> dict[str, str]:
    return {**org.headers, "Content-Type": "application/json"}


async def test_unknown_route_is_404_with_error_body(client: Any) -> None:
    r = await client.get("/no/such/route")
    assert_error(r, 404, "NOT_FOUND")


async def test_wrong_method_is_405_with_error_body(client: Any, org: Org) -> None:
    r = await client.delete("/api/v1/orgs", headers=org.headers)
    body = assert_error(r, 405, "METHOD_NOT_ALLOWED")
    assert body["details"] == []


async def test_malformed_json_is_400(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), content=b'{"name": "x", "role": ', headers=raw(org))
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "body"


async def test_deeply_nested_json_is_400_not_500(client: Any, org: Org) -> None:
    payload = b"[" * 5000 + b"]" * 5000
    r = await client.post(keys_url(org), content=payload, headers=raw(org))
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "body"
    nested_obj = b'{"a":' * 5000 + b"1" + b"}" * 5000
    r = await client.post(keys_url(org), content=nested_obj, headers=raw(org))
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_invalid_utf8_is_400(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), content=b'{"name": "\xff\xfe", "role": "viewer"}', headers=raw(org))
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"] == [{"field": "body", "issue": "Body is not valid UTF-8."}]


async def test_unknown_field_is_400_naming_it(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), json={"name": "k", "role": "viewer", "admin": True}, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"] == [{"field": "admin", "issue": "Unknown field."}]


async def test_wrong_type_is_400_with_dotted_field(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), json={"name": "k", "role": "agent", "uapk_ids": ["ok-id", 7]}, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"] == [{"field": "uapk_ids.1", "issue": "Must be a string, not an integer."}]


async def test_missing_field_and_bad_enum_name_the_field(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), json={"role": "viewer"}, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "name"
    r = await client.post(keys_url(org), json={"name": "k", "role": "superuser"}, headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "role"


async def test_json_of_the_wrong_shape_is_400(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), json=["name", "role"], headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_handler_validation_lists_every_bad_field(client: Any, org: Org) -> None:
    r = await client.post(
        keys_url(org), json={"name": "bad\nname", "role": "viewer", "uapk_ids": ["x"]}, headers=org.headers
    )
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in body["details"]} == {"name", "uapk_ids", "uapk_ids.0"}


async def test_body_over_the_configured_cap_is_413(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org

    app = create_app(settings_factory(api_max_body=2048))
    async with serve_app(app) as c:
        org = await bootstrap_org(app)
        big = json.dumps({"name": "a" * 4000, "role": "viewer"}).encode()
        r = await c.post(keys_url(org), content=big, headers=raw(org))
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        # Just under the cap is fine (the handler then rejects the long name with 400).
        r = await c.post(keys_url(org), content=json.dumps({"name": "a" * 1500, "role": "viewer"}).encode(), headers=raw(org))
        assert_error(r, 400, "VALIDATION_ERROR")


async def test_gateway_routes_keep_their_smaller_cap_in_the_combined_app(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litestar import post

    import bastion.app

    @post("/api/v1/gateway/test-echo", opt={"errors": [400, 413]})
    async def echo(data: dict[str, Any]) -> dict[str, int]:
        return {"size": len(json.dumps(data))}

    monkeypatch.setattr(bastion.app, "gateway_routes", lambda: [echo])
    app = bastion.app.create_app(settings_factory(gateway_max_body=1024, api_max_body=8192))
    async with serve_app(app) as c:
        small = json.dumps({"x": "a" * 500}).encode()
        big = json.dumps({"x": "a" * 3000}).encode()
        h = {"Content-Type": "application/json"}
        r = await c.post("/api/v1/gateway/test-echo", content=small, headers=h)
        assert r.status_code == 201, r.text
        r = await c.post("/api/v1/gateway/test-echo", content=big, headers=h)
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")


async def test_unauthenticated_bad_body_is_401_before_400(client: Any, org: Org) -> None:
    r = await client.post(keys_url(org), content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    r = await client.post(
        keys_url(org), content=b"{not json", headers={"Content-Type": "application/json", "X-API-Key": "bst_wrong"}
    )
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_handler_errors_use_the_error_body(client: Any, org: Org) -> None:
    r = await client.get(f"/api/v1/orgs/{org.org_id}/users/does-not-exist")
    assert_error(r, 405, "METHOD_NOT_ALLOWED")
    r = await client.patch(f"/api/v1/orgs/{org.org_id}/users/nobody", json={"role": "viewer"}, headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")


def test_unhandled_exceptions_are_500_without_internals() -> None:
    """An unexpected exception becomes INTERNAL_ERROR with no exception text in the body."""
    from litestar import Litestar, get
    from litestar.testing import TestClient

    from httpkit.context import RequestContext
    from httpkit.errors import EXCEPTION_HANDLERS

    @get("/boom")
    async def boom() -> None:
        raise KeyError("secret-internal-detail")

    app = Litestar([boom], exception_handlers=EXCEPTION_HANDLERS, logging_config=None)
    app.asgi_handler = RequestContext(app.asgi_handler)  # type: ignore[assignment]
    with TestClient(app) as c:
        r = c.get("/boom")
    body = assert_error(r, 500, "INTERNAL_ERROR")
    assert "secret-internal-detail" not in r.text
    assert body["details"] == []


async def test_every_management_route_authenticates_before_parsing_the_body(client: Any, org: Org) -> None:
    """App-wide: any POST/PATCH route under /api/v1/orgs answers 401 to a bad body without
    credentials (including routes other modules add)."""
    from litestar.routes import HTTPRoute

    checked = 0
    for route in client.app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/api/v1/orgs"):
            continue
        for method in set(route.methods) & {"POST", "PATCH", "PUT"}:
            path = re.sub(r"\{org_id(:\w+)?\}", org.org_id, route.path)
            path = re.sub(r"\{\w+:int\}", "1", path)
            path = re.sub(r"\{[^}]+\}", "x", path)  # other ids: any value
            r = await client.request(method, path, content=b"{broken", headers={"Content-Type": "application/json"})
            assert_error(r, 401, "AUTHENTICATION_REQUIRED")
            checked += 1
    assert checked >= 6


# --- one body reader for every route (core.wire + httpkit.request) -----------------------------
async def test_duplicate_keys_are_refused_on_every_kind_of_body(client: Any, org: Org) -> None:
    """A typed ``data:`` body, a hand-read manifest body and the gateway's body alike."""
    dup = {"field": "body", "issue": "Duplicate key in a JSON object."}
    r = await client.post(keys_url(org), content=b'{"name": "k", "role": "admin", "role": "viewer"}', headers=raw(org))
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [dup]
    r = await client.post(f"/api/v1/orgs/{org.org_id}/manifests", content=b'{"manifest": {}, "manifest": {}}', headers=raw(org))
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [dup]
    body = b'{"agent_id": "a", "uapk_id": "support-bot", "action": {"tool": "crm", "type": "delete", "type": "read"}}'
    r = await client.post("/api/v1/gateway/execute", content=body, headers=raw(org))
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [dup]
    r = await client.get(keys_url(org), headers=org.headers)  # nothing was created
    assert [k["name"] for k in r.json()["items"] if k["name"] == "k"] == []


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/xml", "text/plain", None])
async def test_a_body_that_is_not_json_is_415(client: Any, org: Org, content_type: str | None) -> None:
    headers = dict(org.headers)
    if content_type:
        headers["Content-Type"] = content_type
    payload = b'{"name": "k", "role": "viewer"}'
    for url in (keys_url(org), f"/api/v1/orgs/{org.org_id}/manifests/validate", "/api/v1/gateway/execute"):
        r = await client.post(url, content=payload, headers=headers)
        body = assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert body["details"] == []


async def test_json_media_types_with_parameters_are_accepted(client: Any, org: Org) -> None:
    for ct in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await client.post(keys_url(org), content=b'{"name": "k", "role": "viewer"}',
                              headers={**org.headers, "Content-Type": ct})
        assert r.status_code == 201, r.text


async def test_gateway_body_errors_are_in_our_words(client: Any, org: Org) -> None:
    url = "/api/v1/gateway/execute"
    r = await client.post(url, content=b'{"agent_id": "\xff"}', headers=raw(org))
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [{"field": "body", "issue": "Body is not valid UTF-8."}]
    r = await client.post(url, content=b'{"agent_id": "a",', headers=raw(org))
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [{"field": "body", "issue": "Body is not valid JSON."}]
    r = await client.post(url, json={"agent_id": "a", "uapk_id": "support-bot", "action": {"tool": "crm"}}, headers=org.headers)
    assert assert_error(r, 400, "VALIDATION_ERROR")["details"] == [{"field": "action.type", "issue": "This field is required."}]


async def test_empty_body_on_a_typed_data_parameter_names_the_body(client: Any, org: Org) -> None:
    """An empty body where a handler's ``data:`` is required reads like every other missing
    body (``read_json``), not Litestar's bare parameter name ``'data'``."""
    for content in (b"", b"  \n"):
        r = await client.post(keys_url(org), content=content, headers=raw(org))
        body = assert_error(r, 400, "VALIDATION_ERROR")
        assert body["message"] == "Request body is required."
        assert body["details"] == [{"field": "body", "issue": "A JSON object is required."}]
