"""The decision path without a server: compiled snapshot + quota backend + clock (evaluate -> quota -> settle)."""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.errors import ValidationFailed
from core.settings import load_settings
from gateway.capability import required_capability
from gateway.overrides import check_override, issue_override
from gateway.schemas import GatewayActionRequest
from policies.compile import CompiledOrg, ManifestSnapshot, OrgPolicySource, compile_org
from policies.rules import Rule, RuleIndex
from store.keystore import KeyStore
from store.quotas import MemoryQuotas, RedisQuotas
from tests.gateway.steps import Steps

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def org(*manifests: ManifestSnapshot, rules: tuple[Rule, ...] = ()) -> CompiledOrg:
    return compile_org(OrgPolicySource("org-1", 4, manifests, rules=RuleIndex.build(rules, 1 if rules else 0)),
                       default_per_hour=1000, default_per_day=10000)


def bot(uapk: str = "bot", **kw: Any) -> ManifestSnapshot:
    kw.setdefault("status", "active")
    kw.setdefault("approved", ("email:send", "crm:*"))
    return ManifestSnapshot(manifest_id=f"m-{uapk}", uapk_id=uapk, manifest_hash="sha256:x", version="1.0.0", **kw)


def request(uapk: str = "bot", tool: str = "email", type: str = "send", **extra: Any) -> GatewayActionRequest:
    action = {"type": type, "tool": tool, "params": extra.pop("params", {})}
    for k in ("capability", "amount", "currency"):
        if k in extra:
            action[k] = extra.pop(k)
    return msgspec.convert({"uapk_id": uapk, "agent_id": "agent-1", "action": action, **extra}, GatewayActionRequest)


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Steps, Clock, Any]]:
    clock = Clock(T0 + 100)
    settings = load_settings(env={}, data_dir=tmp_path)
    keys = KeyStore.load_or_create(tmp_path / "keys.json")
    checker = functools.partial(check_override, keys, settings, now=clock)
    redis = None
    if request.param == "memory":
        quotas: Any = MemoryQuotas(clock)
    else:
        from store.runtime import make_redis

        redis = make_redis(request.getfixturevalue("redis_url"))
        redis.connection_pool.connection_kwargs.update(socket_timeout=5, socket_connect_timeout=5)  # busy machine
        quotas = RedisQuotas(redis, test_clock=clock)
        # Bursts of 200 calls share 64 slots: on a busy 2-core machine the production 1 s wait
        # for a slot turns load into 503s ("saturated"); the property here is exactness.
        quotas.slot_wait = 10.0
    yield Steps(quotas, checker, clock), clock, (keys, settings)
    if redis is not None:
        await redis.aclose()


def codes(d: Any) -> list[str]:
    return [r.code for r in d.reasons]


async def test_decision_order_and_codes(env: Any) -> None:
    p, _, _ = env
    o = org(bot(require_human_approval=("crm:delete",), max_actions_per_hour=1),
            bot("off", status="suspended"))
    assert codes(await p.decide(request("ghost"), o, spend=False)) == ["manifest_not_found"]
    assert codes(await p.decide(request("off"), o, spend=False)) == ["manifest_not_active"]
    assert codes(await p.decide(request(tool="files", type="read"), o, spend=False)) == ["capability_not_granted"]
    d = await p.decide(request(tool="crm", type="delete"), o, spend=True)
    assert d.decision == "escalate" and codes(d) == ["requires_human_approval"] and not d.quota.spent
    d = await p.decide(request(), o, spend=True)
    assert d.decision == "allow" and codes(d) == ["all_checks_passed"] and d.quota.spent
    d = await p.decide(request(), o, spend=True)
    assert codes(d) == ["hourly_budget_exceeded"]
    assert [(s.check, s.result) for s in d.trace] == [
        ("manifest", "pass"), ("capability_token", "skip"), ("capability", "pass"), ("human_approval", "pass"),
        ("quota", "fail")]
    assert d.trace[4].rule == "max_actions_per_hour:1"
    # deny beats escalate
    d = await p.decide(request(tool="crm", type="delete"), o, spend=True)
    assert d.decision == "deny" and codes(d) == ["hourly_budget_exceeded"]


async def test_deny_rule_beats_grant(env: Any) -> None:
    p, _, _ = env
    # An org-wide deny rule (a policy rule with the deny effect) beats the manifest's grant.
    o = org(bot(approved=("crm:*",)), rules=(Rule("no-delete", "*", "crm:delete", "deny"),))
    d = await p.decide(request(tool="crm", type="delete"), o, spend=False)
    assert codes(d) == ["policy_denied"] and d.reasons[0].details["rule"] == "no-delete"
    assert d.trace[2].check == "capability" and d.trace[2].rule == "policy:no-delete"
    assert (await p.decide(request(tool="crm", type="read"), o, spend=False)).decision == "allow"


async def test_quota_edges_through_the_decision_path(env: Any) -> None:
    p, clock, _ = env
    o = org(bot(max_actions_per_hour=2, max_actions_per_day=3))
    clock.now = T0 + 3600 - 1
    assert (await p.decide(request(), o, spend=True)).decision == "allow"
    assert (await p.decide(request(), o, spend=True)).decision == "allow"
    d = await p.decide(request(), o, spend=True)
    assert codes(d) == ["hourly_budget_exceeded"]
    assert d.reasons[0].details == {"limit": 2, "remaining": 0, "reset_at": "2026-01-01T01:00:00Z",
                                    "retry_after": 1, "window": "hour"}
    clock.now = T0 + 3600
    assert (await p.decide(request(), o, spend=True)).decision == "allow"
    d = await p.decide(request(), o, spend=True)
    assert codes(d) == ["budget_exceeded"]
    assert d.reasons[0].details == {"limit": 3, "remaining": 0, "reset_at": "2026-01-02T00:00:00Z",
                                    "retry_after": 86400 - 3600, "window": "day"}
    # the day denial left the hour window unspent: one used of two
    assert d.quota.hour_used == 1
    clock.now = T0 + 86400
    assert (await p.decide(request(), o, spend=True)).decision == "allow"


async def test_evaluate_spends_nothing(env: Any) -> None:
    p, _, _ = env
    o = org(bot(max_actions_per_hour=1))
    for _ in range(5):
        d = await p.decide(request(), o, spend=False)
        assert d.decision == "allow" and not d.quota.spent
    assert (await p.decide(request(), o, spend=True)).decision == "allow"
    assert (await p.decide(request(), o, spend=False)).decision == "deny"


async def test_2000_concurrent_executes_admit_exactly_100(env: Any) -> None:
    p, _, _ = env
    o = org(bot(max_actions_per_hour=100, max_actions_per_day=100_000))
    decisions: list[str] = []
    for _ in range(10):
        batch = await asyncio.gather(*(p.decide(request(), o, spend=True) for _ in range(200)))
        decisions += [d.decision for d in batch]
    assert decisions.count("allow") == 100 and decisions.count("deny") == 1900


async def test_override_token_allows_once(env: Any) -> None:
    p, clock, (keys, settings) = env
    clock.now = time.time()  # JWT expiry is checked against the real clock
    o = org(bot(require_human_approval=("crm:delete",)))
    req_args = dict(tool="crm", type="delete", params={"id": 1})
    token, jti, exp = issue_override(
        keys, settings, approval_id="appr-1", org_id="org-1", uapk_id="bot", agent_id="agent-1",
        capability="crm:delete", tool="crm", type="delete", params={"id": 1}, amount=None, currency=None,
        now=clock())
    req = request(**req_args, override_token=token)
    d = await p.decide(req, o, spend=False)  # evaluate: accepted, not consumed
    assert d.decision == "allow" and codes(d) == ["override_token_accepted"] and not d.override_consumed
    results = await asyncio.gather(*(p.decide(req, o, spend=True) for _ in range(20)))
    allowed = [d for d in results if d.decision == "allow"]
    assert len(allowed) == 1 and allowed[0].override_consumed and allowed[0].override.jti == jti
    assert allowed[0].reasons[0].details == {"approval_id": "appr-1"}
    assert {codes(d)[0] for d in results if d.decision == "deny"} == {"override_token_already_used"}
    assert codes(await p.decide(req, o, spend=False)) == ["override_token_already_used"]
    # a token for another action is refused; without a token it escalates again
    other = request(tool="crm", type="delete", params={"id": 2}, override_token=token)
    assert codes(await p.decide(other, o, spend=True)) == ["override_token_action_mismatch"]
    assert (await p.decide(request(**req_args), o, spend=True)).decision == "escalate"


async def test_restricted_uapk_ids(env: Any) -> None:
    p, _, _ = env
    o = org(bot("bot-a"), bot("bot-b"))
    assert (await p.decide(request("bot-a"), o, spend=False, allowed_uapk_ids=("bot-a",))).decision == "allow"
    d = await p.decide(request("bot-b"), o, spend=False, allowed_uapk_ids=("bot-a",))
    assert codes(d) == ["manifest_not_found"]


def test_required_capability() -> None:
    assert required_capability(request(tool="crm", type="read")) == "crm:read"
    assert required_capability(request(tool="crm", type="read", capability="crm:read")) == "crm:read"
    for bad, field in (({"tool": "C rm"}, "action.tool"), ({"type": "re:ad"}, "action.type"),
                       ({"capability": "crm:*"}, "action.capability"), ({"capability": "crm"}, "action.capability"),
                       ({"capability": "crm:read"}, "action.capability")):  # a label other than tool:type
        with pytest.raises(ValidationFailed) as exc:
            required_capability(request(**bad))
        assert [d.field for d in exc.value.details] == [field]
