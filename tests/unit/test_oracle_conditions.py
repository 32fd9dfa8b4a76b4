"""The compiled rule index agrees with pycasbin (policies/rules_model.conf) on random rule
sets with subjects of every kind, all effects and conditions, and random requests."""
from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.capabilities import matches
from policies.compile import ManifestSnapshot
from policies.rules import (
    Conditions,
    Rule,
    RuleContext,
    RuleIndex,
    build_rules_enforcer,
    casbin_verdict,
    parse_condition_string,
)

SEGMENTS = ["crm", "email", "payments", "read", "send", "delete"]
UAPKS = ["bot-a", "bot-b", "bot-c"]
TEAMS = ["support", "sales", None]

segment = st.sampled_from(SEGMENTS)
patterns = st.builds(lambda a, b: f"{a}:{b}", st.one_of(segment, st.just("*")), st.one_of(segment, st.just("*")))
capabilities = st.builds(lambda a, b: f"{a}:{b}", segment, segment)
subjects = st.one_of(st.just("*"), st.sampled_from(UAPKS).map(lambda u: f"agent:{u}"),
                     st.sampled_from(["support", "sales"]).map(lambda t: f"team:{t}"))
amounts = st.sampled_from([0, 10, 100, 1000, 5000])
windows = st.tuples(st.integers(0, 23), st.integers(0, 23)).filter(lambda w: w[0] != w[1]).map(
    lambda w: (w[0] * 60, w[1] * 60))


@st.composite
def conditions(draw: st.DrawFn) -> Conditions:
    above = draw(st.one_of(st.none(), amounts))
    below = draw(st.one_of(st.none(), amounts))
    if above is not None and below is not None and above >= below:
        below = None
    return Conditions(
        amount_above=None if above is None else float(above),
        amount_below=None if below is None else float(below),
        currency=tuple(sorted(set(draw(st.lists(st.sampled_from(["EUR", "USD"]), max_size=2))))),
        jurisdiction_in=tuple(sorted(set(draw(st.lists(st.sampled_from(["DE", "US", "KP"]), max_size=2))))),
        hours_utc=draw(st.one_of(st.none(), windows)),
        outside_hours_utc=draw(st.one_of(st.none(), windows)),
        weekdays=tuple(sorted(set(draw(st.lists(st.integers(0, 6), max_size=3))))),
    )


@st.composite
def rule_sets(draw: st.DrawFn) -> list[Rule]:
    n = draw(st.integers(0, 8))
    return [Rule(f"r{i}", draw(subjects), draw(patterns), draw(st.sampled_from(["allow", "deny", "escalate"])),
                 draw(st.one_of(st.just(Conditions()), conditions()))) for i in range(n)]


contexts = st.builds(
    lambda amount, currency, jur, minute, weekday: RuleContext(amount, currency, jur, minute, weekday),
    st.one_of(st.none(), st.sampled_from([0.0, 5.0, 10.0, 99.5, 100.0, 1000.0, 1000.01, 7000.0])),
    st.one_of(st.none(), st.sampled_from(["EUR", "USD", "GBP"])),
    st.one_of(st.none(), st.sampled_from(["DE", "US", "KP", "FR"])),
    st.integers(0, 1439),
    st.integers(0, 6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(), teams=st.lists(st.sampled_from(TEAMS), min_size=3, max_size=3),
       requests=st.lists(st.tuples(st.sampled_from(UAPKS), capabilities, contexts), min_size=1, max_size=10))
def test_index_agrees_with_casbin(rules: list[Rule], teams: list[str | None], requests: list) -> None:  # type: ignore[type-arg]
    memberships = dict(zip(UAPKS, teams))
    index = RuleIndex.build(rules, 1)
    enforcer = build_rules_enforcer(rules, memberships)
    for uapk, cap, ctx in requests:
        verdict = index.evaluate(uapk, memberships[uapk], cap, ctx)
        effect, explained = casbin_verdict(enforcer, uapk, cap, ctx)
        assert verdict.effect == effect, (uapk, cap, ctx, [r.line() for r in rules], explained)
        if effect in ("deny", "escalate"):
            # pycasbin names a line of that effect; the index names a rule of that effect too
            line = explained[effect]
            assert line[2] == effect and verdict.rule is not None and verdict.rule.effect == effect
        for m in verdict.matched:
            assert matches(m.rule.capability, cap)
            assert m.rule.applies_to(uapk, memberships[uapk])


@settings(max_examples=200, deadline=None)
@given(cond=conditions())
def test_condition_string_round_trip(cond: Conditions) -> None:
    parsed, issues = parse_condition_string(cond.to_string())
    assert not issues and parsed == cond


def test_precedence_deny_over_escalate_over_allow() -> None:
    ctx = RuleContext.at(datetime(2026, 1, 5, 12, tzinfo=UTC).timestamp())
    allow = Rule("a", "*", "crm:*", "allow")
    esc = Rule("e", "team:support", "crm:delete", "escalate")
    deny = Rule("d", "agent:bot-a", "*:delete", "deny")
    for rules, expected in (([allow], None), ([allow, esc], "escalate"), ([allow, esc, deny], "deny"),
                            ([esc, deny], "deny")):
        v = RuleIndex.build(rules).evaluate("bot-a", "support", "crm:delete", ctx)
        assert v.effect == expected
        e = build_rules_enforcer(rules, {"bot-a": "support"})
        assert casbin_verdict(e, "bot-a", "crm:delete", ctx)[0] == expected


# --- whole decisions: manifests (gateway model) + rules (rules model) vs evaluate + settle -----
MONDAY = datetime(2026, 1, 5, tzinfo=UTC).timestamp()


@st.composite
def manifests(draw: st.DrawFn) -> ManifestSnapshot:
    return ManifestSnapshot(
        manifest_id=draw(st.uuids()).hex, uapk_id=draw(st.sampled_from(UAPKS)),
        status=draw(st.sampled_from(["active", "active", "suspended"])),
        approved=tuple(draw(st.lists(patterns, max_size=4))),
        require_human_approval=tuple(draw(st.lists(patterns, max_size=2))),
        team=draw(st.sampled_from(TEAMS)), created_at=float(draw(st.integers(0, 50))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ms=st.lists(manifests(), max_size=5), rules=rule_sets(),
       requests=st.lists(st.tuples(st.sampled_from(UAPKS), capabilities, contexts), min_size=1, max_size=8))
def test_decisions_agree_with_casbin(ms: list, rules: list[Rule], requests: list) -> None:  # type: ignore[type-arg]
    import asyncio

    import msgspec

    from gateway.evaluate import evaluate
    from gateway.schemas import GatewayActionRequest
    from gateway.settle import assumed, settle
    from policies.compile import OrgPolicySource, build_enforcer, casbin_decide, compile_org

    compiled = compile_org(OrgPolicySource("org", 1, tuple(ms), rules=RuleIndex.build(rules, 1)),
                           default_per_hour=10, default_per_day=10)
    grants = build_enforcer(compiled.lines, compiled.lines2)
    teams = {u: a.team for u, a in compiled.agents.items()}
    rule_enforcer = build_rules_enforcer(rules, teams)

    async def run() -> None:
        for uapk, cap, ctx in requests:
            res, _, act = cap.partition(":")
            body: dict = {"uapk_id": uapk, "agent_id": "a", "action": {"tool": res, "type": act}}  # type: ignore[type-arg]
            if ctx.amount is not None:
                body["action"]["amount"] = ctx.amount
            if ctx.currency is not None:
                body["action"]["currency"] = ctx.currency
            if ctx.jurisdiction is not None:
                body["counterparty"] = {"jurisdiction": ctx.jurisdiction}
            now = MONDAY + ctx.weekday * 86400 + ctx.minute * 60
            req = msgspec.convert(body, GatewayActionRequest)
            pending = evaluate(req, compiled, now)  # pure: no quota backend, the quota passes
            d = settle(pending, assumed(pending))
            agent = compiled.agent(uapk)
            granted, human, _ = casbin_decide(grants, uapk, cap)
            effect, _ = casbin_verdict(rule_enforcer, uapk, cap, RuleContext.at(now, ctx.amount, ctx.currency,
                                                                                ctx.jurisdiction))
            if agent is None or not agent.active or not granted or effect in ("deny", "narrowed"):
                expected = "deny"
            elif effect == "escalate" or human:
                expected = "escalate"
            else:
                expected = "allow"
            assert d.decision == expected, (uapk, cap, ctx, compiled.lines, [r.line() for r in rules], d.reasons)

    asyncio.run(run())
