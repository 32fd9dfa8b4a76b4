"""The one-page Markdown summary of a benchmark run (``SUMMARY.md``), from its JSON."""
from __future__ import annotations

from typing import Any


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _status(section: Any) -> str | None:
    """A line for a section that did not run (or failed), else None."""
    if not isinstance(section, dict):
        return "_not run_"
    st = section.get("status")
    if st in (None, "ok"):
        return None
    reason = section.get("reason", "")
    if st == "not_available":
        return f"_not available yet: {reason}_"
    if st == "skipped":
        return f"_skipped: {reason}_"
    return f"**{st}**: {reason}"


def _load(v: Any) -> str:
    return "n/a" if not v else "/".join(f"{x:.1f}" for x in v)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v * 100:.0f}%"


def _errors(x: dict[str, Any]) -> str:
    wrong = x.get("unexpected_decisions") or 0
    errors = x.get("errors_all_repetitions", x.get("errors"))
    return f"{errors}" + (f" (+{wrong} unexpected decisions)" if wrong else "")


def _verdict_cell(v: dict[str, Any]) -> str:
    if v.get("met") is None:
        return "not measured"
    if v["met"]:
        return "met"
    miss = v.get("miss")
    if v.get("op") == "==":
        return f"**missed** by {miss:+.3f} per decision"
    return f"**missed** by {abs(miss) * 100:.0f}%"


def explain(results: dict[str, Any], key: str) -> str:
    """Why a target was missed and what would close it, from this run's own figures."""
    w1 = str((_get(results, "config", "workers") or [1])[0])
    runs = _get(results, "http", "runs", w1) or {}
    if key == "p99_ms_at_16":
        b = _get(runs, "bastion", "16") or {}
        rps, p50, p99 = b.get("rps") or 0, _get(b, "latency_ms", "p50"), _get(b, "latency_ms", "p99")
        base = _get(runs, "baseline", "16") or {}
        little = 16 / rps * 1000 if rps else None
        return (
            f"Closed loop with 16 connections on one server core: by Little's law the mean latency is "
            f"16 / throughput = {_f(little)} ms at {_f(rps)} req/s, so p50 ({_f(p50)} ms) is queueing behind "
            f"15 other requests, not the cost of one decision; p99 ({_f(p99)} ms) adds scheduling noise "
            f"(Redis, PostgreSQL and other processes share the machine). Even the do-nothing baseline "
            f"has p99 {_f(_get(base, 'latency_ms', 'p99'))} ms here. p99 <= 5 ms at 16 connections needs roughly "
            f"16 / 4 ms = 4,000+ req/s per core: cut per-request CPU (see the profile: the audit writer "
            f"and its canonical JSON, the Redis client, the framework layers, the access log line) or add cores."
        )
    if key == "throughput_vs_baseline":
        cpu = _get(runs, "ratio_cpu_per_request", "16")
        b_cpu = _get(runs, "bastion", "16", "server_cpu_us_per_request")
        a_cpu = _get(runs, "baseline", "16", "server_cpu_us_per_request")
        bd = _get(results, "profile", "top", "breakdown") or {}
        parts = ", ".join(f"{k} {v * 100:.0f}%" for k, v in bd.items() if k != "route handler")
        audit = bd.get("audit writer (background)")
        audit_text = (f"The audit writer alone (draining the decisions' events into PostgreSQL, hashing each "
                      f"with RFC 8785 canonical JSON in pure Python) takes {audit * 100:.0f}% of the server's CPU; "
                      if audit else "")
        return (
            f"The server spends {_f(b_cpu, 0)} us of CPU per decision request against the baseline's {_f(a_cpu, 0)} us "
            f"({_f(cpu)}x), so at best it reaches about 1/{_f(cpu, 1)} of the baseline's rate on the same core. "
            f"Profile (share of the server's CPU): {parts}. {audit_text}"
            f"the Redis client is the largest cost on the request path (redis-py asyncio spends roughly 80-120 us of "
            f"CPU per EVALSHA here; hiredis barely changes it), then the framework layers, the JSON access-log line "
            f"and the response. What would close it: a faster canonical JSON for audit hashing (or hashing in "
            f"the writer's batch with a C serializer) and larger writer batches; a leaner Redis path (one raw RESP "
            f"connection per worker pipelining concurrent decisions); a cheaper access log (pre-built format, or "
            f"sampling at high rates); fewer middleware layers on the gateway routes (a plain ASGI route for /execute)."
        )
    if key == "inprocess_p50_us":
        ip = results.get("inprocess") or {}
        sizes = ip.get("sizes") or {}
        per = ", ".join(f"{int(n):,} agents {_f(_get(e, 'pipeline_us', 'p50_median_of_passes'))} us"
                        for n, e in sizes.items())
        return (
            f"By size: {per}. Per call the pipeline builds a Decision with Reason and Step objects and "
            f"formats trace strings, and the policy-rule step builds a RuleContext with a datetime "
            f"(minute and weekday) even when no rule needs them; the growth with size is cache misses "
            f"in larger dicts. Building the trace only for evaluate, computing the rule context lazily "
            f"(only when a matching rule has time conditions) and reusing constant Reason/Step objects "
            f"on the common paths would close it."
        )
    if key == "scale_ratio":
        return (
            "Lookups are dict/set probes, so the growth is cache misses on larger dicts; keep agent "
            "policies compact (slots, shared empty sets) to close it."
        )
    if key == "redis_round_trips":
        return ("A decision's request path makes more (or fewer) Redis round trips than the one quota-script "
                "call: see the per-class table and the per-command counts in section 3.")
    if key == "sql_per_decision":
        kinds = _get(results, "roundtrips", "mix", "sql_statements_net_by_kind") or {}
        other = {k: v for k, v in kinds.items() if not k.split(" ", 1)[-1].startswith("audit_")}
        return (f"Statements beyond the background that are not the audit writer's: {other or 'none'}; "
                "whatever a decision reads must come from the in-memory snapshot instead.")
    return ""


def render_summary(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    lines: list[str] = []
    add = lines.append
    add("# Bastion benchmark summary")
    add("")
    add(f"Run {r.get('started_at')} on commit `{r.get('commit')}` ({r.get('mode')} mode, {_f(r.get('duration_s'), 0)} s), "
        f"produced by `make bench` (`{r.get('command')}`). Raw figures: `latest.json` beside this file.")
    add("")
    add(f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, Python {m.get('python')}, "
        f"{m.get('platform')}. Server pinned to CPU {m.get('server_cpus')}, load generator (and the private Redis) "
        f"to CPU {m.get('loadgen_cpus')}; PostgreSQL unpinned. Load average (1/5/15 min) at start "
        f"{_load(m.get('load_average_at_start'))}, at end {_load(m.get('load_average_at_end'))}: other work on the machine. "
        f"Absolute numbers vary between machines: read the ratios.")
    add("")
    # Targets.
    add("## Targets")
    add("")
    add("| target | this run | verdict |")
    add("|---|---|---|")
    verdicts = r.get("verdicts", {})
    targets = r.get("targets", {})
    for key, t in targets.items():
        v = verdicts.get(key, {})
        add(f"| {t['text']} | {_f(v.get('value'), 3)} | {_verdict_cell(v)} |")
    add("")
    # 1. HTTP.
    add("## 1. Decision throughput and latency")
    add("")
    st = _status(r.get("http"))
    if st:
        add(st)
    else:
        mix = r.get("mix", {})
        total = sum(mix.values()) or 1
        mix_text = ", ".join(f"{k} {v * 100 // total}%" for k, v in mix.items())
        add(f"`POST /api/v1/gateway/execute` over HTTP/1.1 keep-alive, closed loop; mix: {mix_text}. "
            f"Baseline: `benchmarks/baseline_app.py` (one msgspec POST endpoint, same uvicorn settings). "
            f"Ratio = Bastion req/s / baseline req/s; CPU/req = server CPU per request (all workers); "
            f"CPU busy = share of the server's CPU it used. Each point: "
            + (f"{_get(r, 'config', 'smoke_requests')} requests (smoke)." if r.get("mode") == "smoke" else
               f"{_get(r, 'config', 'warmup_s')} s warm-up, {_get(r, 'config', 'duration_s')} s measured, "
               f"best of {_get(r, 'config', 'repeats')} by req/s."))
        if not _get(r, "hooks", "capability_tokens_in_mix"):
            add("Requests carrying capability tokens: **not yet measured** (the pipeline does not take them yet).")
        add("")
        for w, runs in (_get(r, "http", "runs") or {}).items():
            add("")
            add("| workers | conns | server | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU us/req | CPU busy | ratio |")
            add("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for c in sorted((runs.get("bastion") or {}).keys() | (runs.get("baseline") or {}).keys(), key=int):
                for name in ("baseline", "bastion"):
                    x = _get(runs, name, c)
                    if not x:
                        continue
                    lat = x.get("latency_ms", {})
                    ratio = _get(runs, "ratio_rps", c) if name == "bastion" else None
                    add(f"| {w} | {c} | {name} | {_f(x.get('rps'), 0)} | {_f(lat.get('p50'))} | {_f(lat.get('p90'))} | "
                        f"{_f(lat.get('p99'))} | {_f(lat.get('max'))} | {_errors(x)} | "
                        f"{_f(x.get('server_cpu_us_per_request'), 0)} | {_pct(x.get('server_cpu_utilisation'))} | "
                        f"{_f(ratio) if ratio is not None else ''} |")
            cpu_ratio = runs.get("ratio_cpu_per_request") or {}
            if cpu_ratio:
                add("")
                add(f"{w} worker(s): server CPU per request, Bastion / baseline: "
                    + ", ".join(f"{_f(v)}x at {c} conns" for c, v in cpu_ratio.items())
                    + " (robust to other load on the machine, unlike req/s).")
            if runs.get("note"):
                add("")
                add(f"Note ({w} workers): {runs['note']}.")
    add("")
    # 2. In-process.
    add("## 2. Policy scale (in process)")
    add("")
    ip = r.get("inprocess")
    st = _status(ip)
    if st:
        add(st)
    else:
        add("The decision steps called directly (validate, `evaluate`, the quota call, `settle`), warm, in-process quotas, no audit recorder; p50 = median of interleaved passes. "
            "Each org: N agents with active manifests (the manifest Casbin lines) and N policy rules. pycasbin on the "
            "same lines for comparison: `enforce` on the manifest model plus the rules model's matchers "
            "(`policies.rules.casbin_verdict`), fewer calls on big sets. Every outcome is checked against the expected one.")
        add("")
        add("| agents | policy rules | all lines | decide p50 us | decide p99 us | pycasbin p50 us | pycasbin / decide | compile s |")
        add("|---|---|---|---|---|---|---|---|")
        for n, e in (ip.get("sizes") or {}).items():
            pu = e.get("pipeline_us", {})
            cb = e.get("casbin_enforce_us") or {}
            add(f"| {int(n):,} | {e.get('policy_rules', 0):,} | {e.get('rules'):,} | {_f(pu.get('p50_median_of_passes'))} | {_f(pu.get('p99'))} | "
                f"{_f(cb.get('p50'), 0)} ({cb.get('calls', 0)} calls) | {_f(e.get('casbin_over_pipeline_p50'), 0)}x | "
                f"{_f(e.get('compile_s'))} |")
        o = ip.get("orgs") or {}
        if o:
            pu = o.get("pipeline_us", {})
            add(f"| {o.get('orgs'):,} orgs x {o.get('agents_per_org')} | | | {_f(pu.get('p50_median_of_passes'))} | "
                f"{_f(pu.get('p99'))} | | | {_f(o.get('compile_s'))} |")
        add("")
        add(f"Ratio largest / smallest ({ip.get('largest'):,} / {ip.get('smallest'):,} agents): "
            f"**{_f(ip.get('ratio_largest_to_smallest_p50'), 3)}** (p50), {_f(ip.get('ratio_largest_to_smallest_mean'), 3)} "
            f"(mean); {o.get('orgs')} orgs / smallest: {_f(ip.get('ratio_orgs_to_smallest_p50'), 3)}.")
    add("")
    # 3. Round trips.
    add("## 3. Round trips per decision (warm server)")
    add("")
    rt = r.get("roundtrips")
    st = _status(rt)
    if st:
        add(st)
    else:
        add(f"Each class alone, {rt.get('decisions_per_class')} decisions on one connection. Redis: "
            f"total_reads_processed (round trips) and INFO commandstats (commands, those run inside the quota "
            f"script included) on {'a private redis-server' if rt.get('redis_private') else 'a shared Redis (other clients add noise)'}; "
            f"PostgreSQL: the statements in the bench database's log, and xact_commit + xact_rollback. Both corrected "
            f"by an idle window of {rt.get('idle_window_s')} s (background there: "
            f"{_f(_get(rt, 'idle', 'sql_transactions'))} SQL transactions, {_f(_get(rt, 'idle', 'redis', 'commands'))} "
            f"Redis commands: the gateway's 2 s version poll, the 2 s catch-ups of revoked tokens and spent override "
            f"tokens, the audit writer's reads).")
        add("")
        add("| class | decisions | Redis round trips, request path | + audit writer | Redis commands (incl. inside Lua) | commands |")
        add("|---|---|---|---|---|---|")
        for name, c in (rt.get("classes") or {}).items():
            cmds = ", ".join(f"{k} {v}" for k, v in sorted((c.get("redis_by_command") or {}).items()))
            add(f"| {name} | {c.get('decisions')} | {_f(c.get('redis_round_trips_request_path'), 3)} | "
                f"{_f(c.get('redis_round_trips_audit_writer'), 3)} | {_f(c.get('redis_commands_per_decision'), 3)} | {cmds} |")
        mx = rt.get("mix") or {}
        add("")
        add("Request path = every read event (round trip) the server's Redis connections caused, less the audit "
            "writer's and the change bus's own commands (XREADGROUP, XACK, XDEL, XAUTOCLAIM, PUBLISH, PING: one "
            "round trip each); the audit writer drains the decisions' events asynchronously, in batches, in the "
            "same process.")
        add("")
        if "sql_statements_request_path_per_decision" in mx:
            kinds = ", ".join(f"{k} {v:g}" for k, v in (mx.get("sql_statements_net_by_kind") or {}).items())
            idle = _get(rt, "idle", "sql_statements") or {}
            idle_kinds = ", ".join(f"{k} {v}" for k, v in sorted(idle.items()))
            add(f"SQL per decision over the whole mix ({mx.get('decisions')} decisions; statements in the PostgreSQL "
                f"log of the bench database, the idle window's subtracted): request path "
                f"**{_f(mx.get('sql_statements_request_path_per_decision'), 4)}**, audit writer "
                f"{_f(mx.get('sql_statements_audit_writer_per_decision'), 4)} (statements on the audit_* tables; "
                f"asyncpg logs each row of a batched insert as one statement). Net by kind: {kinds or 'none'}. "
                f"Idle window: {idle_kinds or 'none'}. Transactions (pg_stat_database), everything: "
                f"{_f(mx.get('sql_transactions_per_decision'), 3)} per decision ({mx.get('sql_transactions_raw')} raw).")
        else:
            add(f"SQL transactions per decision over the whole mix: **{_f(mx.get('sql_transactions_per_decision'), 3)}** "
                f"({mx.get('sql_transactions_raw')} raw in {mx.get('decisions')} decisions, before the idle correction; "
                f"the PostgreSQL log was not readable, so statements were not counted and the audit writer's "
                f"transactions are included).")
    add("")
    # 4. Profile.
    add("## 4. Profile (pyinstrument, 1 worker, 16 connections)")
    add("")
    pr = r.get("profile")
    st = _status(pr)
    if st:
        add(st)
    else:
        top = pr.get("top", {})
        add(f"{top.get('samples')} samples over {top.get('duration_s')} s of {top.get('clock', 'wall time')} "
            f"({pr.get('requests')} requests at "
            f"{_f(pr.get('rps_under_profiler'), 0)} req/s under the profiler). Full tree: `profile.txt` here, "
            f"`benchmarks/results/profile/profile.html` after a run.")
        add("")
        bd = top.get("breakdown") or {}
        if bd:
            add("Where the server's CPU goes (share of all samples, callees included; the rows overlap: the "
                "pipeline includes the Redis call, requests include all of the request rows): "
                + "; ".join(f"{k} {v * 100:.0f}%" for k, v in bd.items()) + ".")
            add("")
        add("| top functions by own time | share |")
        add("|---|---|")
        for row in (top.get("by_self") or [])[:10]:
            add(f"| `{row['function']}` | {row['share'] * 100:.1f}% |")
        add("")
        add("| Bastion code by total time | share |")
        add("|---|---|")
        for row in (top.get("by_total_project") or [])[:8]:
            add(f"| `{row['function']}` | {row['share'] * 100:.1f}% |")
    add("")
    # 5. Management.
    add("## 5. Management")
    add("")
    mg = r.get("management")
    st = _status(mg)
    if st:
        add(st)
    else:
        prop = mg.get("approval_visible_everywhere_ms") or {}
        add(f"Register a manifest: p50 {_f(_get(mg, 'register_ms', 'p50'))} ms (max {_f(_get(mg, 'register_ms', 'max'))}); "
            f"approve: p50 {_f(_get(mg, 'approve_ms', 'p50'))} ms (max {_f(_get(mg, 'approve_ms', 'max'))}); "
            f"{mg.get('iterations')} each over HTTP.")
        add(f"An approval decides on every one of {mg.get('workers')} workers after "
            f"{_f(prop.get('streak_of_allows_ms'))} ms ({prop.get('streak')} allows in a row on fresh connections; "
            f"first allow {_f(prop.get('first_allow_ms'))} ms; the approve call itself {_f(prop.get('approve_response_ms'))} ms).")
        ro = mg.get("policy_rollout") or {}
        if ro.get("status") == "ok":
            add(f"Policy rollout of {ro.get('rules'):,} rules (`bastion policy import`, Casbin CSV): every one of "
                f"{mg.get('workers')} workers decides with the new rules **{_f(ro.get('every_worker_ms'), 0)} ms** after "
                f"the command starts (first worker {_f(ro.get('first_worker_ms'), 0)} ms; the import command itself, "
                f"a new process, {_f(ro.get('import_command_s'))} s, of which parsing the file {_f(ro.get('parse_s'))} s; "
                f"after it exits {_f(ro.get('after_import_ms'), 0)} ms).")
        else:
            add(f"Policy rollout until every process serves it: **{'not yet measured' if ro.get('status') == 'not_yet_measured' else ro.get('status', 'not measured')}** "
                f"({ro.get('reason', '')}).")
    add("")
    # Misses.
    missed = [k for k, v in verdicts.items() if v.get("met") is False]
    if missed:
        add("## Missed targets: by how much, why, what would close it")
        add("")
        for k in missed:
            add(f"- **{targets[k]['text']}**: {_f(verdicts[k].get('value'), 3)} ({_verdict_cell(verdicts[k])}). "
                f"{explain(r, k)}")
        add("")
    notes = r.get("notes") or []
    if r.get("failures"):
        notes = [f"failed sections: {', '.join(r['failures'])} (details in latest.json)", *notes]
    if notes:
        add("## Notes")
        add("")
        for n in notes:
            add(f"- {n}")
        add("")
    return "\n".join(lines)
