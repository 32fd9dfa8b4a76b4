"""Policy scale, in process: the cost of one decision as the policy grows.

The gateway decides in steps (``gateway.service.Gateway._decide``): ``required_capability``,
``gateway.evaluate.evaluate(request, compiled_org, now)``, the quota call, ``gateway.settle.
settle``: no HTTP, no SQL, the org's policy compiled into hash sets (``policies.compile``).
Here the same steps run directly (:class:`Decider`), warm, with the in-process quota backend
(``store.quotas.MemoryQuotas``, so no network is timed), without the audit recorder, on one org of N agents and N rules for N = 10 ... 100k, and on 1k orgs.
pycasbin's own ``enforce`` is timed on the very same Casbin lines (``policies.compile.
build_enforcer``) to show what the compiled index saves; it walks every line per call, so it
gets fewer iterations on the big sets.

The policy of size N: N agents ``agent-<i>``, each with an active manifest approving one
capability (one ``p`` allow line each: N allow lines), a human-approval line for one agent in
10, and N policy rules, among them a deny rule for one agent in 10 and 10 org-wide deny rules
(``*`` subject). Decisions are drawn at random over
the agents: 80% a granted capability (allow), 10% a capability no rule grants (deny), 10% one
an org rule forbids (deny by rule).
"""
from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from typing import Any

RESOURCES = 50
ORG_WIDE_DENIES = 10


def _agent_cap(i: int) -> str:
    return f"res{i % RESOURCES}:op{i % 7}"


TEAMS = 20


def _policy_rules(n: int) -> list[Any]:
    """N policy rules (policies/rules.py) over the N agents: per agent one of an allow rule with
    a condition on the capability it uses (always holds: every weekday), a deny rule and an
    escalate rule on capabilities it does not use; plus a rule per team and org-wide ones.
    Most rules never match a given request, as in a real rule set; a quarter of the allowed
    requests are narrowed by (and pass) an allow rule."""
    from policies.rules import Rule, parse_conditions

    rules = []
    # Valid as the API would store it, and true on any day: the index and pycasbin must agree.
    every_day, issues = parse_conditions({"weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]})
    assert not issues, issues
    for i in range(n):
        kind = i % 8
        if kind in (0, 1):
            rules.append(Rule(f"r{i}", f"agent:agent-{i}", _agent_cap(i), "allow", every_day))
        elif kind in (2, 3, 4):
            rules.append(Rule(f"r{i}", f"agent:agent-{i}", f"res{i % RESOURCES}:drop", "deny"))
        elif kind in (5, 6):
            rules.append(Rule(f"r{i}", f"team:team-{i % TEAMS}", f"res{i % RESOURCES}:wire{i}", "escalate"))
        else:
            rules.append(Rule(f"r{i}", "*", f"other{i}:op{i % 7}", "deny"))
    # Per-agent deny rules (one per 10 agents) and a fixed handful of org-wide ones: org-wide
    # rules apply to every agent, so their count is what a real org keeps small.
    rules += [Rule(f"deny-agent-{i}", f"agent:agent-{i}", f"res{i % RESOURCES}:op{(i + 1) % 7}", "deny")
              for i in range(5, n, 10)]
    rules += [Rule(f"deny-all-{j}", "*", f"forbidden{j}:op{j % 7}", "deny") for j in range(ORG_WIDE_DENIES)]
    return rules


def build_source(org_id: str, n: int, version: int = 1, with_rules: bool = True) -> Any:
    from policies.compile import ManifestSnapshot, OrgPolicySource

    manifests = []
    for i in range(n):
        human = (f"res{i % RESOURCES}:approve",) if i % 10 == 0 else ()
        manifests.append(
            ManifestSnapshot(
                manifest_id=f"m-{org_id}-{i}",
                uapk_id=f"agent-{i}",
                status="active",
                approved=(_agent_cap(i),),
                require_human_approval=human,
                max_actions_per_hour=10**9,
                max_actions_per_day=10**9,
                manifest_hash=f"sha256:{i:064x}",
                version="1.0.0",
                team=f"team-{i % TEAMS}",
                created_at=float(i),
            )
        )
    source = OrgPolicySource(org_id=org_id, version=version, manifests=tuple(manifests))
    if with_rules and "rules" in getattr(OrgPolicySource, "__dataclass_fields__", {}):
        import dataclasses

        from policies.rules import RuleIndex

        source = dataclasses.replace(source, rules=RuleIndex.build(_policy_rules(n), version))
    return source


def compile_source(source: Any) -> Any:
    from policies.compile import compile_org

    return compile_org(source, default_per_hour=1000, default_per_day=10000)


def request_mix(n_agents: int, count: int, seed: int = 7) -> list[tuple[Any, str]]:
    """(GatewayActionRequest, expected outcome) pairs."""
    from gateway.schemas import Action, GatewayActionRequest

    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        i = rnd.randrange(n_agents)
        roll = rnd.random()
        if roll < 0.8:
            cap, expect = _agent_cap(i), "allow"
        elif roll < 0.9:
            cap, expect = f"res{i % RESOURCES}:nothing", "deny"
        else:
            j = rnd.randrange(ORG_WIDE_DENIES)
            cap, expect = f"forbidden{j}:op{j % 7}", "deny"
        tool, _, typ = cap.partition(":")
        out.append((GatewayActionRequest(uapk_id=f"agent-{i}", agent_id=f"inst-{i}", action=Action(type=typ, tool=tool)), expect))
    return out


def _percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    n = len(s)

    def pct(q: float) -> float:
        return round(s[max(0, min(n - 1, int(-(-q * n // 100)) - 1))] / 1000.0, 3)

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": round(statistics.fmean(s) / 1000.0, 3)}


class Decider:
    """The gateway's decision steps without state loading, audit and shadow (gateway/service.py)."""

    def __init__(self, quotas: Any):
        from gateway.capability import required_capability
        from gateway.evaluate import evaluate
        from gateway.quota import spend_or_check
        from gateway.settle import settle

        self.quotas = quotas
        self._steps = required_capability, evaluate, spend_or_check, settle

    async def decide(self, req: Any, org: Any, *, spend: bool) -> Any:
        required_capability, evaluate, spend_or_check, settle = self._steps
        pending = evaluate(req, org, time.time(), capability=required_capability(req))
        return settle(pending, await spend_or_check(self.quotas, pending, execute=spend))


async def _warm(pipeline: Any, orgs: list[Any], reqs: list[tuple[int, Any, str]]) -> int:
    """One full pass (caches, lazily built objects); returns how many outcomes were unexpected."""
    wrong = 0
    for oi, req, expect in reqs:
        d = await pipeline.decide(req, orgs[oi], spend=True)
        if d.decision != expect:
            wrong += 1
    return wrong


async def _sample(pipeline: Any, orgs: list[Any], reqs: list[tuple[int, Any, str]]) -> tuple[list[int], int]:
    """Time every decision of one pass: (per-call ns, total ns)."""
    decide = pipeline.decide
    samples: list[int] = []
    perf = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t_start = perf()
        for oi, req, _expect in reqs:
            t0 = perf()
            await decide(req, orgs[oi], spend=True)
            samples.append(perf() - t0)
        total = perf() - t_start
    finally:
        if gc_was:
            gc.enable()
    return samples, total


def _summarise(passes: list[tuple[list[int], int]], wrong: int) -> dict[str, Any]:
    """Percentiles over all samples, plus the median and minimum of the per-pass medians
    (the robust figure on a shared, noisy machine: passes of every size are interleaved)."""
    all_samples = [x for samples, _ in passes for x in samples]
    out = _percentiles_us(all_samples)
    medians = sorted(_percentiles_us(samples)["p50"] for samples, _ in passes)
    out["p50_median_of_passes"] = medians[len(medians) // 2]
    out["p50_min_of_passes"] = medians[0]
    total_ns = sum(t for _, t in passes)
    out["decisions"] = len(all_samples)
    out["throughput_per_s"] = round(len(all_samples) / (total_ns / 1e9), 1) if total_ns else 0.0
    out["passes"] = len(passes)
    out["wrong_outcomes"] = wrong
    return out


def _time_casbin(enforcer: Any, reqs: list[tuple[int, Any, str]], max_calls: int, budget_s: float,
                 rules_enforcer: Any = None) -> dict[str, Any]:
    """pycasbin on the same lines: the manifest grant (``enforce``) and, when the org has policy
    rules, their verdict (``policies.rules.casbin_verdict``: the rules model's matchers)."""
    from policies.compile import subject

    samples: list[int] = []
    perf = time.perf_counter_ns
    deadline = time.perf_counter() + budget_s
    enforce = enforcer.enforce
    wrong = 0
    if rules_enforcer is not None:
        from policies.rules import RuleContext, casbin_verdict
    for _oi, req, expect in reqs[:max_calls]:
        cap = f"{req.action.tool}:{req.action.type}"
        t0 = perf()
        ok = enforce(subject(req.uapk_id), cap)
        if ok and rules_enforcer is not None:
            effect, _ = casbin_verdict(rules_enforcer, req.uapk_id, cap, RuleContext.at(time.time()))
            ok = effect is None
        samples.append(perf() - t0)
        if ok != (expect == "allow"):
            wrong += 1
        if time.perf_counter() > deadline and len(samples) >= 3:
            break
    out = _percentiles_us(samples)
    out["calls"] = len(samples)
    out["wrong_outcomes"] = wrong
    return out


def run(sizes: list[int], n_orgs: int, agents_per_org: int, decisions: int, rounds: int,
        casbin_calls: int, casbin_budget_s: float, casbin_max_size: int) -> dict[str, Any]:
    """``rounds`` interleaved passes of ``decisions`` decisions over every configuration."""
    try:
        from store.quotas import MemoryQuotas
    except ImportError as exc:
        return {"status": "not_available", "reason": f"gateway decision path not importable: {exc}"}
    from policies.compile import build_enforcer

    results: dict[str, Any] = {"status": "ok", "sizes": {}, "orgs": {}, "decisions_per_pass": decisions}
    configs: dict[str, tuple[list[Any], list[tuple[int, Any, str]]]] = {}
    for n in sizes:
        t0 = time.perf_counter()
        compiled = compile_source(build_source("org-0", n))
        compile_s = time.perf_counter() - t0
        reqs = [(0, r, e) for r, e in request_mix(n, decisions)]
        configs[str(n)] = ([compiled], reqs)
        policy_rules = len(getattr(getattr(compiled, "rules", None), "rules", ()) or ())
        results["sizes"][str(n)] = {
            "agents": n,
            "rules": len(compiled.lines) + len(compiled.lines2) + policy_rules,
            "manifest_lines": len(compiled.lines) + len(compiled.lines2),
            "policy_rules": policy_rules,
            "compile_s": round(compile_s, 3),
        }
    # Many orgs: n_orgs orgs of agents_per_org agents each, decisions spread over all of them.
    t0 = time.perf_counter()
    orgs = [compile_source(build_source(f"org-{k}", agents_per_org)) for k in range(n_orgs)]
    compile_s = time.perf_counter() - t0
    rnd = random.Random(11)
    reqs = [(rnd.randrange(n_orgs), r, e) for r, e in request_mix(agents_per_org, decisions, seed=13)]
    configs["orgs"] = (orgs, reqs)
    results["orgs"] = {"orgs": n_orgs, "agents_per_org": agents_per_org, "compile_s": round(compile_s, 3)}

    async def measure() -> dict[str, dict[str, Any]]:
        pipelines = {k: Decider(MemoryQuotas()) for k in configs}
        wrong = {k: await _warm(pipelines[k], *configs[k]) for k in configs}
        passes: dict[str, list[tuple[list[int], int]]] = {k: [] for k in configs}
        for _ in range(rounds):
            for k, (o, r) in configs.items():
                passes[k].append(await _sample(pipelines[k], o, r))
        return {k: _summarise(passes[k], wrong[k]) for k in configs}

    timed = asyncio.run(measure())
    for k, res in timed.items():
        (results["orgs"] if k == "orgs" else results["sizes"][k])["pipeline_us"] = res

    for n in sizes:
        entry = results["sizes"][str(n)]
        if n > casbin_max_size:
            entry["casbin_enforce_us"] = None
            continue
        compiled_orgs, reqs = configs[str(n)]
        t1 = time.perf_counter()
        compiled = compiled_orgs[0]
        enforcer = build_enforcer(compiled.lines, compiled.lines2)
        rules_enforcer = None
        rules = getattr(compiled, "rules", None)
        if rules:
            from policies.rules import build_rules_enforcer

            rules_enforcer = build_rules_enforcer(
                rules.rules, {u: a.team for u, a in compiled.agents.items()})
        entry["casbin_load_s"] = round(time.perf_counter() - t1, 3)
        calls = casbin_calls if n <= 1000 else max(3, casbin_calls // (n // 1000))
        entry["casbin_enforce_us"] = _time_casbin(enforcer, reqs, calls, casbin_budget_s, rules_enforcer)
        entry["casbin_over_pipeline_p50"] = round(
            entry["casbin_enforce_us"]["p50"] / max(entry["pipeline_us"]["p50_median_of_passes"], 1e-9), 1)
        del enforcer
        gc.collect()

    smallest, largest = str(min(sizes)), str(max(sizes))
    small = results["sizes"][smallest]["pipeline_us"]
    large = results["sizes"][largest]["pipeline_us"]
    results["smallest"], results["largest"] = int(smallest), int(largest)
    results["ratio_largest_to_smallest_p50"] = round(large["p50_median_of_passes"] / small["p50_median_of_passes"], 3)
    results["ratio_largest_to_smallest_mean"] = round(large["mean"] / small["mean"], 3)
    results["ratio_orgs_to_smallest_p50"] = round(
        results["orgs"]["pipeline_us"]["p50_median_of_passes"] / small["p50_median_of_passes"], 3)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.inprocess [--json ARGS] [--out FILE] [--cpus 0]``."""
    import argparse
    import json
    import os

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None, help="keyword arguments of run() as JSON")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cpus", default=None, help="pin to these CPUs (default: the first available)")
    args = ap.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else sorted(os.sched_getaffinity(0))[:1]
    os.sched_setaffinity(0, set(cpus))
    kw = json.loads(args.json) if args.json else {
        "sizes": [10, 1000, 10000, 100000], "n_orgs": 1000, "agents_per_org": 10, "decisions": 2000, "rounds": 5,
        "casbin_calls": 200, "casbin_budget_s": 6.0, "casbin_max_size": 100000}
    result = run(**kw)
    result["cpus"] = cpus
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
