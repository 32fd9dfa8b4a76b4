"""Manifest document validation (register -> 400, validate -> errors) and the manifest hash."""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785

from tests.api.test_manifests_support import base, doc, reorder
from tests.conftest import Org, assert_error, bootstrap_org, serve_app

Mutator = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        node = d
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return mutate


def _del(path: str) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        node = d
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        del node[last]

    return mutate


def _caps(*caps: Any) -> Mutator:
    return _set("capabilities.requested", list(caps))


AGENT_ID_MSG = "Agent ID must be lowercase alphanumeric with hyphens"

BAD: list[tuple[str, Mutator, str]] = [
    ("version missing", _del("version"), "version"),
    ("version 2.0", _set("version", "2.0"), "version"),
    ("version number", _set("version", 1.0), "version"),
    ("agent missing", _del("agent"), "agent"),
    ("agent not object", _set("agent", "bot"), "agent"),
    ("agent.id missing", _del("agent.id"), "agent.id"),
    ("agent.id upper", _set("agent.id", "Customer-Bot"), "agent.id"),
    ("agent.id one char", _set("agent.id", "a"), "agent.id"),
    ("agent.id 64 chars", _set("agent.id", "a" * 64), "agent.id"),
    ("agent.id leading hyphen", _set("agent.id", "-bot"), "agent.id"),
    ("agent.id underscore", _set("agent.id", "bot_1"), "agent.id"),
    ("agent.id space", _set("agent.id", "my bot"), "agent.id"),
    ("agent.id zero width", _set("agent.id", "bot\u200b"), "agent.id"),
    ("agent.id non-ascii", _set("agent.id", "b\u00f8t"), "agent.id"),
    ("agent.id cyrillic", _set("agent.id", "b\u043et"), "agent.id"),
    ("agent.id newline", _set("agent.id", "bot\n"), "agent.id"),
    ("agent.id number", _set("agent.id", 12), "agent.id"),
    ("agent.name missing", _del("agent.name"), "agent.name"),
    ("agent.name empty", _set("agent.name", "  "), "agent.name"),
    ("agent.name number", _set("agent.name", 5), "agent.name"),
    ("agent.name too long", _set("agent.name", "n" * 201), "agent.name"),
    ("agent.name control", _set("agent.name", "Bot\x07"), "agent.name"),
    ("agent.version missing", _del("agent.version"), "agent.version"),
    ("agent.version two parts", _set("agent.version", "1.0"), "agent.version"),
    ("agent.version v prefix", _set("agent.version", "v1.0.0"), "agent.version"),
    ("agent.version leading zero", _set("agent.version", "01.0.0"), "agent.version"),
    ("agent.version empty prerelease", _set("agent.version", "1.0.0-"), "agent.version"),
    ("agent.version number", _set("agent.version", 1), "agent.version"),
    ("agent.version trailing newline", _set("agent.version", "1.0.0\n"), "agent.version"),
    ("agent.description too long", _set("agent.description", "d" * 501), "agent.description"),
    ("agent.team number", _set("agent.team", 7), "agent.team"),
    ("agent.organization zero width", _set("agent.organization", "acme\u200d"), "agent.organization"),
    ("capabilities missing", _del("capabilities"), "capabilities"),
    ("capabilities not object", _set("capabilities", ["email:send"]), "capabilities"),
    ("requested missing", _del("capabilities.requested"), "capabilities.requested"),
    ("requested empty", _caps(), "capabilities.requested"),
    ("requested string", _set("capabilities.requested", "email:send"), "capabilities.requested"),
    ("requested too many", _caps(*[f"r{i}:read" for i in range(257)]), "capabilities.requested"),
    ("cap one segment", _caps("email:send", "email"), "capabilities.requested.1"),
    ("cap three segments", _caps("email:send:x"), "capabilities.requested.0"),
    ("cap upper", _caps("Email:send"), "capabilities.requested.0"),
    ("cap partial wildcard", _caps("email:se*"), "capabilities.requested.0"),
    ("cap space", _caps("email:se nd"), "capabilities.requested.0"),
    ("cap zero width", _caps("email:send\u200b"), "capabilities.requested.0"),
    ("cap cyrillic", _caps("\u0435mail:send"), "capabilities.requested.0"),
    ("cap trailing newline", _caps("email:send\n"), "capabilities.requested.0"),
    ("cap empty segment", _caps("email:"), "capabilities.requested.0"),
    ("cap number", _caps(1), "capabilities.requested.0"),
    ("cap duplicate", _caps("email:send", "email:send"), "capabilities.requested.1"),
    ("constraints not object", _set("constraints", "fast"), "constraints"),
    ("per hour zero", _set("constraints.max_actions_per_hour", 0), "constraints.max_actions_per_hour"),
    ("per hour negative", _set("constraints.max_actions_per_hour", -1), "constraints.max_actions_per_hour"),
    ("per hour float", _set("constraints.max_actions_per_hour", 1.5), "constraints.max_actions_per_hour"),
    ("per hour integral float", _set("constraints.max_actions_per_hour", 100.0), "constraints.max_actions_per_hour"),
    ("per hour bool", _set("constraints.max_actions_per_hour", True), "constraints.max_actions_per_hour"),
    ("per hour string", _set("constraints.max_actions_per_hour", "100"), "constraints.max_actions_per_hour"),
    ("per hour null", _set("constraints.max_actions_per_hour", None), "constraints.max_actions_per_hour"),
    ("per day bool", _set("constraints.max_actions_per_day", False), "constraints.max_actions_per_day"),
    ("per day float", _set("constraints.max_actions_per_day", 2.0), "constraints.max_actions_per_day"),
    ("per day huge", _set("constraints.max_actions_per_day", 10**12), "constraints.max_actions_per_day"),
    ("hitl string", _set("constraints.require_human_approval", "crm:delete"), "constraints.require_human_approval"),
    ("hitl bad entry", _set("constraints.require_human_approval", ["crm:delete", "CRM:x"]), "constraints.require_human_approval.1"),
    ("hitl zero width", _set("constraints.require_human_approval", ["crm:delete\u200b"]), "constraints.require_human_approval.0"),
    ("token flag string", _set("constraints.require_capability_token", "yes"), "constraints.require_capability_token"),
    ("metadata not object", _set("metadata", "x"), "metadata"),
    ("metadata too large", _set("metadata", {"blob": "x" * (16 * 1024)}), "metadata"),
    ("metadata unrepresentable int", _set("metadata", {"n": 2**60}), "metadata"),
    ("metadata too deep", _set("metadata", json.loads('{"a":' * 40 + "1" + "}" * 40)), "metadata"),
    ("unknown top-level", _set("extra", 1), "extra"),
    ("unknown agent field", _set("agent.owner", "me"), "agent.owner"),
    ("unknown capabilities field", _set("capabilities.denied", []), "capabilities.denied"),
    ("unknown constraints field", _set("constraints.max_tokens", 5), "constraints.max_tokens"),
]


@pytest.mark.parametrize("mutate,field", [pytest.param(m, f, id=name) for name, m, f in BAD])
async def test_rule(client: Any, org: Org, mutate: Mutator, field: str) -> None:
    d = doc()
    mutate(d)
    body = assert_error(await client.post(base(org), json=d, headers=org.headers), 400, "VALIDATION_ERROR")
    fields = [x["field"] for x in body["details"]]
    assert fields == [field], body
    if field == "agent.id" and "id" in d.get("agent", {}):
        assert body["details"][0]["issue"] == AGENT_ID_MSG

    r = await client.post(f"{base(org)}/validate", json=d, headers=org.headers)
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["valid"] is False and "manifest_hash" not in v
    assert [e["field"] for e in v["errors"]] == [field]
    assert v["errors"][0]["message"] == body["details"][0]["issue"]
    # Nothing was stored.
    assert (await client.get(base(org), headers=org.headers)).json()["total"] == 0


GOOD: list[tuple[str, Mutator]] = [
    ("agent.id two chars", _set("agent.id", "ab")),
    ("agent.id 63 chars", _set("agent.id", "a" * 63)),
    ("agent.id digit first, trailing hyphen", _set("agent.id", "1bot-")),
    ("semver prerelease and build", _set("agent.version", "1.0.0-rc.1+build.5")),
    ("semver zero", _set("agent.version", "0.0.1")),
    ("description 500 chars", _set("agent.description", "d" * 500)),
    ("wildcards", _caps("crm:*", "*:read", "*:*", "a_b-c:d_e")),
    ("256 capabilities", _caps(*[f"r{i}:read" for i in range(256)])),
    ("no constraints", _del("constraints")),
    ("only per day", _set("constraints", {"max_actions_per_day": 1})),
    ("capability token flag", _set("constraints.require_capability_token", True)),
    ("no metadata", _del("metadata")),
    ("unicode name", _set("agent.name", "B\u00fcro-Agent \u2014 \u65e5\u672c")),
    ("metadata with escapes", _set("metadata", {"note": "line1\nline2\u0000\t", "\u00e9": "\u20ac"})),
    ("metadata floats and nesting", _set("metadata", {"ratio": 0.1, "tags": ["a", {"b": None}], "n": -5})),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in GOOD])
async def test_accepted(client: Any, org: Org, mutate: Mutator) -> None:
    d = doc()
    mutate(d)
    v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    assert v["valid"] is True and v["errors"] == [], v
    r = await client.post(base(org), json=d, headers=org.headers)
    assert r.status_code == 201, r.text
    assert r.json()["manifest_hash"] == v["manifest_hash"]
    expected = "sha256:" + hashlib.sha256(rfc8785.dumps(d)).hexdigest()
    assert v["manifest_hash"] == expected
    # Stored exactly as submitted.
    got = (await client.get(f"{base(org)}/{r.json()['manifest_id']}", headers=org.headers)).json()
    assert got["agent"] == d["agent"] and got["metadata"] == d.get("metadata", {})
    assert got["constraints"] == d.get("constraints", {}) and got["capabilities"]["requested"] == d["capabilities"]["requested"]


async def test_every_bad_field_is_reported_at_once(client: Any, org: Org) -> None:
    d = doc()
    d["version"] = "9"
    d["agent"]["id"] = "Bad Id"
    d["agent"]["version"] = "one"
    d["capabilities"]["requested"] = ["ok:read", "BAD"]
    d["constraints"]["max_actions_per_hour"] = True
    d["surprise"] = {}
    body = assert_error(await client.post(base(org), json=d, headers=org.headers), 400, "VALIDATION_ERROR")
    assert sorted(x["field"] for x in body["details"]) == sorted([
        "version", "agent.id", "agent.version", "capabilities.requested.1", "constraints.max_actions_per_hour", "surprise",
    ])
    v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    assert sorted(e["field"] for e in v["errors"]) == sorted(x["field"] for x in body["details"])


async def test_error_count_is_bounded(client: Any, org: Org) -> None:
    d = doc()
    for i in range(500):
        d[f"junk{i}"] = i
    body = assert_error(await client.post(base(org), json=d, headers=org.headers), 400, "VALIDATION_ERROR")
    assert 0 < len(body["details"]) <= 100


@pytest.mark.parametrize("raw", [b"[]", b'"manifest"', b"1", b"null", b"{not json", b"", b"[" * 5000])
async def test_a_body_that_is_not_a_json_object_is_400(client: Any, org: Org, raw: bytes) -> None:
    headers = {**org.headers, "content-type": "application/json"}
    body = assert_error(await client.post(base(org), content=raw, headers=headers), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "body"
    body = assert_error(await client.post(f"{base(org)}/validate", content=raw, headers=headers), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "body"


async def test_oversized_body_is_refused(client: Any, org: Org) -> None:
    d = doc()
    d["capabilities"]["requested"] = ["a:b"] * 300_000  # ~2 MB, over the 1 MiB API cap
    r = await client.post(base(org), json=d, headers=org.headers)
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


# --- warnings ----------------------------------------------------------------------------
async def test_warning_when_no_rate_limits(client: Any, org: Org) -> None:
    warning = {"field": "constraints", "message": "No rate limits defined, defaults will apply"}
    d = doc()
    del d["constraints"]
    v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    assert v["valid"] is True and v["warnings"] == [warning]
    d["constraints"] = {"require_human_approval": ["crm:update"]}  # a requested one: no other warning
    v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    assert v["warnings"] == [warning]
    for key in ("max_actions_per_hour", "max_actions_per_day"):
        d["constraints"] = {key: 10}
        v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
        assert v["warnings"] == [], key
    # Warnings also come with errors.
    d = doc("Bad")
    del d["constraints"]
    v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    assert v["valid"] is False and v["warnings"] == [warning]
    assert v["errors"] == [{"field": "agent.id", "message": AGENT_ID_MSG}]


# --- the hash ----------------------------------------------------------------------------
async def test_hash_is_stable_across_key_order_and_matches_register(client: Any, org: Org) -> None:
    d = doc()
    shuffled = reorder(d)
    assert list(shuffled) != list(d)
    v1 = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    v2 = (await client.post(f"{base(org)}/validate", json=shuffled, headers=org.headers)).json()
    assert v1["manifest_hash"] == v2["manifest_hash"]
    # Same bytes on the wire in another order and with whitespace: same hash.
    spaced = json.dumps(shuffled, indent=4).encode()
    v3 = (await client.post(f"{base(org)}/validate", content=spaced, headers={**org.headers, "content-type": "application/json"})).json()
    assert v3["manifest_hash"] == v1["manifest_hash"]
    r = await client.post(base(org), content=spaced, headers={**org.headers, "content-type": "application/json"})
    assert r.status_code == 201 and r.json()["manifest_hash"] == v1["manifest_hash"]
    got = (await client.get(f"{base(org)}/{r.json()['manifest_id']}", headers=org.headers)).json()
    assert got["manifest_hash"] == v1["manifest_hash"]
    # Any content change changes the hash.
    changed = copy.deepcopy(d)
    changed["constraints"]["max_actions_per_hour"] = 101
    v4 = (await client.post(f"{base(org)}/validate", json=changed, headers=org.headers)).json()
    assert v4["manifest_hash"] != v1["manifest_hash"]


async def test_hash_recipe_from_the_docs(client: Any, org: Org) -> None:
    """docs/manifests.md: sha256 over the RFC 8785 canonical JSON of the submitted document."""
    d = doc(name="Caf\u00e9 Bot \U0001f916")
    d["metadata"] = {"z": 1e21, "a": [0.5, -0.0, 100], "\u00e9": "\u20ac"}
    canonical = rfc8785.dumps(d)
    assert b'"a":[0.5,0,100]' in canonical and b"1e+21" in canonical
    v = (await client.post(f"{base(org)}/validate", json=d, headers=org.headers)).json()
    assert v["manifest_hash"] == "sha256:" + hashlib.sha256(canonical).hexdigest()


# --- rate-limit tier ---------------------------------------------------------------------
async def test_register_and_validate_use_the_heavy_tier(settings_factory: Any) -> None:
    from bastion.app import create_app

    settings = settings_factory(rate_heavy_burst=3, rate_heavy_per_minute=3)
    async with serve_app(create_app(settings)) as client:
        org = await bootstrap_org(client.app)
        assert (await client.post(base(org), json=doc(version="1.0.0"), headers=org.headers)).status_code == 201
        assert (await client.post(f"{base(org)}/validate", json=doc(), headers=org.headers)).status_code == 200
        assert (await client.post(base(org), json=doc(version="1.0.1"), headers=org.headers)).status_code == 201
        r = await client.post(f"{base(org)}/validate", json=doc(), headers=org.headers)
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        assert int(r.headers["retry-after"]) >= 1
        assert_error(await client.post(base(org), json=doc(version="1.0.2"), headers=org.headers), 429, "RATE_LIMIT_EXCEEDED")
        # The standard tier is a separate budget.
        assert (await client.get(base(org), headers=org.headers)).status_code == 200
