"""Look-alike capabilities, with fixed examples, for every user of the capability matcher.

A ``*`` segment matches exactly one whole segment and a concrete segment only itself
(docs/gateway.md): ``crm:*`` does not cover ``crmx:read``, ``a:read`` is not ``a-b:read``,
``*:send`` is not ``email:sender``. A prefix match in the matcher (``startswith`` for ``==``)
would make each pair below match; the hypothesis oracle finds that only by chance, these
examples every time. Users checked: the manifest grant and ``require_human_approval`` at the
gateway, the approval of a subset of the requested capabilities, capability-token issuance
(narrowing), the token's own capability list at the gateway and at /verify, policy rules
(the compiled index and the Casbin model), and the matcher functions themselves.
"""
from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.schemas import GatewayActionRequest
from policies.capabilities import casbin_match, covers, matches
from policies.rules import RuleContext, RuleIndex, build_rules_enforcer, casbin_verdict, parse_rule
from tests.conftest import Org, assert_error, make_key
from tests.gateway.factories import action, add_manifest

EXECUTE = "/api/v1/gateway/execute"

# (pattern, a look-alike it must NOT match, a capability it must match)
CASES = [
    ("crm:*", "crmx:read", "crm:read"),
    ("a:*", "a-b:read", "a:read"),
    ("a:read", "a-b:read", "a:read"),
    ("*:send", "email:sender", "email:send"),
    ("email:send", "email:send-all", "email:send"),
    ("x_1:*", "x_1x:run", "x_1:run"),
]
IDS = [f"{p}-vs-{bad}" for p, bad, _ in CASES]


def _act(cap: str, **kw: Any) -> dict[str, Any]:
    tool, _, type_ = cap.partition(":")
    return action(kw.pop("uapk_id"), tool=tool, type=type_, **kw)


async def _decide(client: Any, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(EXECUTE, json=body, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _code(out: dict[str, Any]) -> tuple[str, str]:
    return out["decision"], out["reasons"][0]["code"]


@pytest.mark.parametrize(("pattern", "bad", "good"), CASES, ids=IDS)
def test_matcher_functions(pattern: str, bad: str, good: str) -> None:
    assert matches(pattern, good) and not matches(pattern, bad)
    assert casbin_match(good, pattern) and not casbin_match(bad, pattern)
    assert covers(pattern, good) and not covers(pattern, bad)
    # Narrowing: a look-alike wildcard is not covered either.
    bad_res, _, bad_act = bad.partition(":")
    assert not covers(pattern, f"{bad_res}:*")


@pytest.mark.parametrize(("pattern", "bad", "good"), CASES, ids=IDS)
def test_policy_rule_index_and_casbin_model(pattern: str, bad: str, good: str) -> None:
    rule, issues = parse_rule({"id": "r1", "subject": "*", "capability": pattern, "effect": "deny"}, "rule")
    assert rule is not None, issues
    index = RuleIndex.build([rule], version=1)
    enforcer = build_rules_enforcer([rule])
    for cap, want in ((good, "deny"), (bad, None)):
        context = RuleContext.of_request(msgspec.convert(_act(cap, uapk_id="bot"), GatewayActionRequest), 0.0)
        assert [r.id for r in index.matching("bot", None, cap)] == (["r1"] if want else []), cap
        assert index.evaluate("bot", None, cap, context).effect == want, cap
        assert casbin_verdict(enforcer, "bot", cap, context)[0] == want, cap


async def test_manifest_grant_and_human_approval_at_the_gateway(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    for i, (pattern, bad, good) in enumerate(CASES):
        granted, human = f"grant-{i}", f"human-{i}"
        await add_manifest(runtime, org.org_id, granted, approved=[pattern])
        await add_manifest(runtime, org.org_id, human, approved=["*:*"], require_human_approval=[pattern])
        key = await make_key(client, org, "agent", [granted, human])
        assert _code(await _decide(client, key, _act(good, uapk_id=granted))) == ("allow", "all_checks_passed")
        assert _code(await _decide(client, key, _act(bad, uapk_id=granted))) == ("deny", "capability_not_granted"), pattern
        assert _code(await _decide(client, key, _act(good, uapk_id=human))) == ("escalate", "requires_human_approval")
        assert _code(await _decide(client, key, _act(bad, uapk_id=human))) == ("allow", "all_checks_passed"), pattern


async def test_approving_a_subset_never_widens_the_request(client: Any, org: Org) -> None:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    for i, (pattern, bad, good) in enumerate(CASES):
        doc = {"version": "1.0", "agent": {"id": f"subset-{i}", "name": "Subset", "version": "1.0.0"},
               "capabilities": {"requested": [pattern]}}
        r = await client.post(base, json=doc, headers=org.headers)
        assert r.status_code == 201, r.text
        mid = r.json()["manifest_id"]
        r = await client.post(f"{base}/{mid}/approve", json={"approved_capabilities": [bad]}, headers=org.headers)
        assert_error(r, 422, "UNPROCESSABLE_ENTITY")
        r = await client.post(f"{base}/{mid}/approve", json={"approved_capabilities": [good]}, headers=org.headers)
        assert r.status_code == 200 and r.json()["status"] == "active", r.text


async def test_capability_tokens_narrow_and_are_checked_segment_by_segment(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    tokens = f"/api/v1/orgs/{org.org_id}/capability-tokens"
    for i, (pattern, bad, good) in enumerate(CASES):
        # Issuance: the manifest grants only the pattern; the look-alike is not covered.
        only = f"narrow-{i}"
        await add_manifest(runtime, org.org_id, only, approved=[pattern])
        r = await client.post(tokens, json={"uapk_id": only, "agent_id": "agent-1", "capabilities": [bad]},
                              headers=org.headers)
        assert_error(r, 403, "PERMISSION_DENIED")
        r = await client.post(tokens, json={"uapk_id": only, "agent_id": "agent-1", "capabilities": [good]},
                              headers=org.headers)
        assert r.status_code == 201, r.text

        # Use: the manifest grants both; a token for the pattern does not carry the look-alike.
        both = f"both-{i}"
        await add_manifest(runtime, org.org_id, both, approved=[pattern, bad])
        r = await client.post(tokens, json={"uapk_id": both, "agent_id": "agent-1", "capabilities": [pattern]},
                              headers=org.headers)
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        key = await make_key(client, org, "agent", [both])
        out = await _decide(client, key, _act(good, uapk_id=both, capability_token=token))
        assert _code(out) == ("allow", "all_checks_passed")
        out = await _decide(client, key, _act(bad, uapk_id=both, capability_token=token))
        assert _code(out) == ("deny", "capability_not_in_token"), pattern
        for cap, allowed in ((good, True), (bad, False)):
            r = await client.post("/api/v1/capability-tokens/verify", json={"token": token, "capability": cap},
                                  headers={"X-API-Key": key})
            assert r.status_code == 200 and r.json()["capability_allowed"] is allowed, (cap, r.text)


async def test_policy_rules_at_the_gateway(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    for i, (pattern, bad, good) in enumerate(CASES):
        uapk = f"ruled-{i}"
        await add_manifest(runtime, org.org_id, uapk, approved=["*:*"])
        for effect, outcome in (("deny", ("deny", "policy_denied")), ("escalate", ("escalate", "requires_human_approval"))):
            rule = {"id": f"{effect}-{i}", "subject": f"agent:{uapk}", "capability": pattern, "effect": effect}
            r = await client.post(f"/api/v1/orgs/{org.org_id}/policies/rules", json=rule, headers=org.headers)
            assert r.status_code == 201, r.text
            key = await make_key(client, org, "agent", [uapk])
            assert _code(await _decide(client, key, _act(good, uapk_id=uapk)))[0] == outcome[0]
            assert _code(await _decide(client, key, _act(bad, uapk_id=uapk))) == ("allow", "all_checks_passed"), (effect, pattern)
            r = await client.delete(f"/api/v1/orgs/{org.org_id}/policies/rules/{effect}-{i}", headers=org.headers)
            assert r.status_code == 200, r.text
