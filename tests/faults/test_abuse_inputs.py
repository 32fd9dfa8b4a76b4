"""Hostile request bodies against the in-process app (PostgreSQL + Redis): oversized bodies
(413), deep nesting (400), huge arrays and strings (400 or 413), invalid UTF-8 (400),
look-alike and zero-width characters in ids and capabilities (400), and bounded memory:
no request costs more than about 100 times its size."""
from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import pytest

from tests.conftest import Org, assert_error, make_key
from tests.faults.helpers import manifest_doc
from tests.gateway.factories import action, add_manifest

GATEWAY = ["/api/v1/gateway/evaluate", "/api/v1/gateway/execute"]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def backend() -> str:
    return "postgres"  # the production backend; the abuse is the same on both


@pytest.fixture
async def agent(client: Any, org: Org) -> dict[str, Any]:
    await add_manifest(client.app.state.runtime, org.org_id, "support-bot", approved=["email:send", "crm:read"])
    key = await make_key(client, org, "agent", ["support-bot"])
    return {"X-API-Key": key, **JSON}


def _manifests(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/manifests"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- size caps ------------------------------------------------------------------------------
async def test_gateway_body_over_cap_is_413(client: Any, agent: dict[str, str]) -> None:
    cap = client.app.state.settings.gateway_max_body
    body = action(params={"blob": "x" * (cap + 1)})
    for url in GATEWAY:
        r = await client.post(url, content=json.dumps(body), headers=agent)
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")


async def test_api_body_over_cap_is_413(client: Any, org: Org) -> None:
    cap = client.app.state.settings.api_max_body
    doc = manifest_doc("big-bot")
    doc["metadata"] = {"blob": "x" * (cap + 1)}
    r = await client.post(_manifests(org), content=json.dumps(doc), headers={**org.headers, **JSON})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_body_over_cap_is_413(client: Any, agent: dict[str, str]) -> None:
    """No Content-Length: the cap still applies while streaming."""
    cap = client.app.state.settings.gateway_max_body

    async def chunks() -> Any:
        for _ in range(cap // 4096 + 4):
            yield b"x" * 4096

    r = await client.post(GATEWAY[1], content=chunks(), headers=agent)
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


# --- nesting, huge arrays and strings ------------------------------------------------------------
async def test_gateway_deep_nesting_is_400(client: Any, agent: dict[str, str]) -> None:
    depth = 20_000  # 40 KB: under the gateway's cap
    raw = '{"uapk_id":"support-bot","agent_id":"a","action":{"type":"send","tool":"email","params":{"x":' + _nested(depth) + "}}}"
    for url in GATEWAY:
        r = await client.post(url, content=raw, headers=agent)
        assert_error(r, 400, "VALIDATION_ERROR")


async def test_api_deep_nesting_is_400(client: Any, org: Org) -> None:
    doc = json.dumps(manifest_doc("deep-bot"))
    raw = doc[:-1] + ',"metadata":{"x":' + _nested(200_000) + "}}"
    r = await client.post(_manifests(org), content=raw, headers={**org.headers, **JSON})
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_huge_array_and_strings_are_rejected(client: Any, org: Org, agent: dict[str, str]) -> None:
    doc = manifest_doc("huge-bot")
    doc["capabilities"]["requested"] = [f"svc{i}:read" for i in range(60_000)]
    raw = json.dumps(doc)
    r = await client.post(_manifests(org), content=raw, headers={**org.headers, **JSON})
    if len(raw) > client.app.state.settings.api_max_body:  # decided by the configured cap, not by chance
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    else:
        assert_error(r, 400, "VALIDATION_ERROR")

    doc = manifest_doc("huge-bot")
    doc["agent"]["name"] = "n" * 500_000
    r = await client.post(_manifests(org), content=json.dumps(doc), headers={**org.headers, **JSON})
    assert_error(r, 400, "VALIDATION_ERROR")

    for field in ("uapk_id", "agent_id"):
        r = await client.post(GATEWAY[1], content=json.dumps({**action(), field: "a" * 50_000}), headers=agent)
        assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post(GATEWAY[1], content=json.dumps(action(tool="t" * 50_000)), headers=agent)
    assert_error(r, 400, "VALIDATION_ERROR")


# --- encodings and look-alikes -------------------------------------------------------------
INVALID_UTF8 = [b'{"uapk_id":"support-bot\xff\xfe"}', b"\xc3\x28", b'{"a":"\xed\xa0\x80"}']

LOOKALIKES = [
    "support\u200bbot",  # zero-width space
    "support-bot\u200d",  # zero-width joiner
    "\ufeffsupport-bot",  # BOM
    "\u0455upport-bot",  # Cyrillic dze for "s"
    "support\u2010bot",  # Unicode hyphen
    "support-b\u043et",  # Cyrillic o
    "SUPPORT-BOT",  # case look-alike
    "support-bot\u0000",
    "support-bot\n",
]
LOOKALIKE_CAPS = ["email:s\u0435nd", "email:send\u200b", "\u0435mail:send", "email\uff1asend", "Email:send", "email:send\n"]


async def test_invalid_utf8_is_400(client: Any, org: Org, agent: dict[str, str]) -> None:
    for raw in INVALID_UTF8:
        r = await client.post(GATEWAY[1], content=raw, headers=agent)
        assert_error(r, 400, "VALIDATION_ERROR")
        r = await client.post(_manifests(org), content=raw, headers={**org.headers, **JSON})
        assert_error(r, 400, "VALIDATION_ERROR")


async def test_lookalike_ids_are_400_in_manifests(client: Any, org: Org) -> None:
    for uapk_id in LOOKALIKES:
        r = await client.post(_manifests(org), json=manifest_doc(uapk_id), headers=org.headers)
        assert_error(r, 400, "VALIDATION_ERROR")


async def test_lookalike_capabilities_are_400(client: Any, org: Org, agent: dict[str, str]) -> None:
    for cap in LOOKALIKE_CAPS:
        doc = manifest_doc("cap-bot")
        doc["capabilities"]["requested"] = ["email:send", cap]
        r = await client.post(_manifests(org), json=doc, headers=org.headers)
        assert_error(r, 400, "VALIDATION_ERROR")
        tool, _, typ = cap.partition(":")
        for body in (action(capability=cap), action(tool=tool, type=typ or "send")):
            r = await client.post(GATEWAY[1], json=body, headers=agent)
            assert_error(r, 400, "VALIDATION_ERROR")


async def test_lookalike_uapk_ids_are_400_at_the_gateway(client: Any, agent: dict[str, str]) -> None:
    """Regression (found by this suite): a look-alike of an agent's id was answered as "some
    other agent that does not exist" (200 deny, the hostile string echoed in the reasons):
    it is malformed input, refused before any decision."""
    for uapk_id in LOOKALIKES:
        for url in GATEWAY:
            r = await client.post(url, json=action(uapk_id=uapk_id), headers=agent)
            assert_error(r, 400, "VALIDATION_ERROR")
            assert r.json()["details"][0]["field"] == "uapk_id"


async def test_control_and_zero_width_agent_ids_are_400(client: Any, agent: dict[str, str]) -> None:
    """Regression (found by this suite): agent ids with zero-width, newline or ANSI escape
    characters were accepted (and stored in approvals)."""
    for agent_id in ["agent\u200b1", "agent-1\n", "agent\x1b[31m1", "agent 1", "\u0430gent-1"]:
        r = await client.post(GATEWAY[1], json=action(agent_id=agent_id), headers=agent)
        assert_error(r, 400, "VALIDATION_ERROR")
        assert r.json()["details"][0]["field"] == "agent_id"


# --- memory ---------------------------------------------------------------------------------
async def _peak_for(client: Any, method: str, url: str, raw: bytes, headers: dict[str, str]) -> tuple[int, int]:
    gc.collect()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    r = await client.request(method, url, content=raw, headers=headers)
    _, peak = tracemalloc.get_traced_memory()
    return r.status_code, peak - base


async def test_memory_per_request_is_bounded(client: Any, org: Org, agent: dict[str, str]) -> None:
    """Large-but-allowed bodies: the peak extra memory of a request stays under 100 times its
    size (no quadratic copies, no unbounded expansion)."""
    cap_gw = client.app.state.settings.gateway_max_body
    gw = action(params={f"k{i}": "v" * 100 for i in range((cap_gw - 2048) // 110)})
    gw_raw = json.dumps(gw).encode()
    assert len(gw_raw) < cap_gw
    doc = manifest_doc("mem-bot")
    doc["metadata"] = {f"k{i}": "v" * 200 for i in range(3000)}
    api_raw = json.dumps(doc).encode()
    cases = [
        ("POST", GATEWAY[0], gw_raw, agent, 200),
        ("POST", GATEWAY[1], gw_raw, agent, 200),
        ("POST", _manifests(org) + "/validate", api_raw, {**org.headers, **JSON}, 200),
        # Under the body cap, but its metadata is over the 16 KiB metadata cap: parsed whole,
        # then refused (validate reports it; register answers 400).
        ("POST", _manifests(org), api_raw, {**org.headers, **JSON}, 400),
    ]
    # Warm up once (imports, caches, compiled state), then measure.
    for method, url, raw, headers, _ in cases:
        await client.request(method, url, content=raw, headers=headers)
    tracemalloc.start(1)
    try:
        report = {}
        for method, url, raw, headers, expected in cases:
            status, peak = await _peak_for(client, method, url, raw, headers)
            assert status == expected, (url, status)
            report[url] = (len(raw), peak, round(peak / len(raw), 1))
            assert peak < 100 * len(raw), report
    finally:
        tracemalloc.stop()
    print("memory per request (bytes in, peak bytes, ratio):", report)


async def test_trailing_newline_capability_is_400_even_under_a_wildcard_grant(client: Any, org: Org) -> None:
    """Regression (found by this suite): the capability grammar was checked with ``^...$``,
    and ``$`` matches before a trailing newline: ``email:send\\n`` passed as a concrete
    capability, and ``email:*`` granted it (a log/trace-forging allow)."""
    await add_manifest(client.app.state.runtime, org.org_id, "wild-bot", approved=["email:*"])
    key = await make_key(client, org, "agent", ["wild-bot"])
    headers = {"X-API-Key": key}
    r = await client.post(GATEWAY[1], json=action(uapk_id="wild-bot", capability="email:send"), headers=headers)
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    for cap in ("email:send\n", "email:send\r\n", "email\n:send"):
        r = await client.post(GATEWAY[1], json=action(uapk_id="wild-bot", capability=cap), headers=headers)
        assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post(GATEWAY[1], json=action(uapk_id="wild-bot", tool="email", type="send\n"), headers=headers)
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_trailing_newline_in_slugs_and_key_restrictions_is_400(client: Any, org: Org) -> None:
    """Regression (found by this suite): slugs and an API key's uapk_ids were matched with
    ``^...$`` too, so ``acme-2\\n`` was a valid slug."""
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    assert r.status_code == 200, r.text
    session = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await client.post("/api/v1/orgs", json={"name": "Evil", "slug": "evil-org\n"}, headers=session)
    assert_error(r, 400, "VALIDATION_ERROR")
    r = await client.post("/api/v1/orgs", json={"name": "Fine", "slug": "fine-org"}, headers=session)
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys",
                          json={"name": "k", "role": "agent", "uapk_ids": ["support-bot\n"]}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")


def _outcome(r: Any) -> tuple[Any, ...]:
    """(status, code, first detail's field) of an error, (status, decision, first reason) of a
    decision, (status,) of anything else."""
    body = r.json()
    if r.status_code >= 400:
        assert set(body) == {"code", "message", "details", "request_id"}, body  # the spec's error body
        return r.status_code, body["code"], body["details"][0]["field"] if body["details"] else None
    if "decision" in body:
        return r.status_code, body["decision"], body["reasons"][0]["code"]
    return (r.status_code,)


async def test_nul_characters_have_exact_outcomes(client: Any, org: Org) -> None:
    """Regression (found by this suite): a NUL character reaching PostgreSQL (which cannot
    store it in text) was a 500. Now each input has one answer: a 400 naming the field for a
    name or an id, the database's own refusal as a 400 where a NUL reaches a query, and free-form
    JSON (params, metadata) stored and given back intact."""
    await add_manifest(client.app.state.runtime, org.org_id, "nul-bot", approved=["email:send", "stripe:refund"],
                       require_human_approval=["stripe:refund"])
    key = {"X-API-Key": await make_key(client, org, "agent", ["nul-bot"])}
    nul_params = {"k\u0000": "v\u0000"}
    cases = [
        ("POST", "/api/v1/auth/login", {"email": "x\u0000@acme.com", "password": "\u0000" * 8}, None,
         (400, "VALIDATION_ERROR", "body")),  # refused by the database, as a 400
        ("POST", "/api/v1/auth/login", {"email": org.email, "password": "owner-pass\u0000"}, None,
         (401, "AUTHENTICATION_REQUIRED", None)),
        ("POST", f"/api/v1/orgs/{org.org_id}/api-keys", {"name": "k\u0000", "role": "agent"}, org.headers,
         (400, "VALIDATION_ERROR", "name")),
        ("GET", f"/api/v1/orgs/{org.org_id}/manifests/by-uapk/nul%00bot", None, org.headers, (404, "NOT_FOUND", None)),
        ("GET", f"/api/v1/orgs/{org.org_id}/manifests?team=a%00b", None, org.headers, (400, "VALIDATION_ERROR", "team")),
        ("GET", f"/api/v1/orgs/{org.org_id}/approvals?uapk_id=a%00b", None, org.headers,
         (400, "VALIDATION_ERROR", "body")),  # refused by the database, as a 400
        ("POST", GATEWAY[1], action(uapk_id="nul-bot", tool="stripe", type="refund", params=nul_params,
                                    counterparty={"name": "n\u0000"}), key, (400, "VALIDATION_ERROR", "counterparty.name")),
        ("POST", "/api/v1/gateway/tokens", {"uapk_id": "nul-bot", "agent_id": "a1", "capabilities": ["email:send"],
                                            "constraints": {"k\u0000": 1}}, key,
         (400, "VALIDATION_ERROR", "constraints.k\u0000")),
        ("POST", GATEWAY[1], action(uapk_id="nul-bot", params=nul_params), key, (200, "allow", "all_checks_passed")),
    ]
    for method, url, body, headers, expected in cases:
        r = await client.request(method, url, json=body, headers=headers or {})
        assert _outcome(r) == expected, (method, url, r.text)
    # Free-form JSON keeps its NULs: an escalated action's params, a manifest's metadata.
    r = await client.post(GATEWAY[1], json=action(uapk_id="nul-bot", tool="stripe", type="refund", params=nul_params),
                          headers=key)
    assert _outcome(r) == (200, "escalate", "requires_human_approval"), r.text
    approval = await client.get(f"/api/v1/orgs/{org.org_id}/approvals/{r.json()['approval_id']}", headers=org.headers)
    assert approval.json()["action"]["params"] == nul_params
    metadata = {"k\u0000": "v\u0000"}
    r = await client.post(_manifests(org), json={**manifest_doc("nul-meta-bot"), "metadata": metadata}, headers=org.headers)
    assert r.status_code == 201, r.text
    stored = await client.get(f"{_manifests(org)}/{r.json()['manifest_id']}", headers=org.headers)
    assert stored.json()["metadata"] == metadata


async def test_extreme_numbers_have_exact_outcomes(client: Any, org: Org) -> None:
    """Overflowing floats, huge integers and -0 in amounts and params, with and without an
    override token (whose action hash canonicalises them): each has one exact answer, in
    Bastion's wording (core/wire.py), never a 500."""
    await add_manifest(client.app.state.runtime, org.org_id, "num-bot", approved=["stripe:refund", "email:send"],
                       require_human_approval=["stripe:refund"])
    headers = {"X-API-Key": await make_key(client, org, "agent", ["num-bot"]), **JSON}
    base = '{"uapk_id":"num-bot","agent_id":"a1","action":{"type":"refund","tool":"stripe"'
    out_of_range = (400, "VALIDATION_ERROR", "body", "Number is out of range.")
    not_json = (400, "VALIDATION_ERROR", "body", "Body is not valid JSON.")
    escalate = (200, "escalate", "requires_human_approval")
    cases = [
        (base + ',"amount":1e309}}', out_of_range),
        (base + ',"amount":-1e309}}', out_of_range),
        (base + ',"amount":' + "9" * 5000 + "}}", out_of_range),
        (base + ',"params":{"n":1e400}}}', out_of_range),
        (base + ',"amount":-0.0}}', escalate),  # -0 is not negative
        (base + ',"amount":1e-400}}', escalate),  # underflows to 0
        (base + ',"params":{"n":' + "9" * 400 + "}}}", escalate),  # params are free-form
        (base + ',"params":{"n":-0}},"override_token":"x.y.z"}', (200, "deny", "override_token_invalid")),
        (base + ',"amount":NaN}}', not_json),
        (base + ',"amount":Infinity}}', not_json),
    ]
    for url in GATEWAY:
        for raw, expected in cases:
            r = await client.post(url, content=raw, headers=headers)
            got = _outcome(r)
            if r.status_code == 400:
                got += (r.json()["details"][0]["issue"],)
            assert got == expected, (url, raw[-60:], r.text)
            if got == escalate:
                assert (r.json()["approval_id"] is not None) == url.endswith("execute"), r.text
