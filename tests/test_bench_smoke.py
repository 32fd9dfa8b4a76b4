"""The benchmark harness never rots: a tiny run of every section (a few hundred requests against
the real server on PostgreSQL + Redis, tiny policy sizes) must produce well-formed results.

Counts, zero errors, the decisions each request class expects, the JSON keys and the summary's
sections are asserted; timings never are.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import loadgen
from benchmarks.run import SECTIONS, TARGETS, Config, run
from benchmarks.summary import render_summary

LATENCY_KEYS = {"p50", "p90", "p99", "max", "mean"}


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile(values, 100) == 100.0
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([], 50) == 0.0


def test_build_request_is_http11_with_exact_length() -> None:
    raw = loadgen.build_request("127.0.0.1", 9, {"path": "/p", "headers": {"X-API-Key": "k"}, "body": '{"a":"é"}'})
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /p HTTP/1.1"
    assert b"x-api-key: k" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert json.loads(body) == {"a": "é"}


def test_summary_marks_missing_sections_not_measured() -> None:
    text = render_summary({"targets": TARGETS, "verdicts": {k: {"value": None, "met": None} for k in TARGETS},
                           "http": {"status": "not_available", "reason": "no gateway"}})
    assert "not available yet: no gateway" in text
    assert text.count("not measured") >= len(TARGETS)


def _check_load(out: dict[str, Any], budget: int, classes: set[str]) -> None:
    assert budget <= out["requests"] <= budget + out["connections"], out
    assert out["errors"] == 0, out["error_kinds"]
    assert out["unexpected_decisions"] == 0, out["per_class"]
    assert set(out["latency_ms"]) == LATENCY_KEYS
    assert set(out["per_class"]) == classes
    assert sum(c["requests"] for c in out["per_class"].values()) == out["requests"]
    assert out["rps"] > 0 and out["server_cpu_us_per_request"] is not None


@pytest.mark.slow
def test_smoke_run_produces_well_formed_results(tmp_path: Path) -> None:
    from tests.conftest import REDIS_URL

    # A private redis-server when the machine has one (as `make bench` does), else our test DB.
    redis_url = None if shutil.which("redis-server") else REDIS_URL
    cfg = Config.smoke_config(tmp_path / "bench", sections=SECTIONS, redis_url=redis_url)
    results = run(cfg)

    on_disk = json.loads((cfg.out / "latest.json").read_text())
    assert on_disk["mode"] == "smoke"
    assert not results.get("failures"), {k: results[k].get("traceback") for k in results.get("failures", [])}
    for key in ("schema", "machine", "config", "targets", "verdicts", "http", "roundtrips", "management",
                "profile", "inprocess", "duration_s", "commit"):
        assert key in on_disk, key
    assert set(on_disk["machine"]) >= {"nproc", "cpu_model", "python", "server_cpus", "loadgen_cpus"}
    assert set(on_disk["verdicts"]) == set(TARGETS)

    # 1. HTTP: baseline and Bastion at every connection count, no errors, the mix as intended.
    runs = on_disk["http"]["runs"]["1"]
    classes = set(on_disk["mix"])
    assert {"allow", "deny", "over_quota"} <= classes
    for c in cfg.connections:
        _check_load(runs["baseline"][str(c)], cfg.smoke_requests, {"baseline"})
        bastion = runs["bastion"][str(c)]
        _check_load(bastion, cfg.smoke_requests, classes)
        assert set(bastion["per_class"]["allow"]["decisions"]) == {"allow"}
        assert set(bastion["per_class"]["deny"]["decisions"]) == {"deny"}
        assert set(bastion["per_class"]["over_quota"]["decisions"]) == {"deny"}
        assert runs["ratio_rps"][str(c)] > 0

    # 3. Round trips: every class measured; an allowed decision touched Redis, a denied one not.
    rt = on_disk["roundtrips"]
    assert rt["status"] == "ok"
    assert set(rt["classes"]) == classes
    assert rt["classes"]["allow"]["decisions"] >= cfg.roundtrip_decisions
    assert rt["classes"]["allow"]["redis_by_command"], rt["classes"]["allow"]
    for c in rt["classes"].values():
        assert c["redis_round_trips_request_path"] is not None and c["redis_round_trips_audit_writer"] is not None
    assert rt["headline"]["redis_round_trips_per_allowed_decision"] is not None
    assert rt["headline"]["sql_per_decision"] is not None

    # 5. Management.
    mg = on_disk["management"]
    assert mg["iterations"] == cfg.management_iterations
    assert set(mg["register_ms"]) == {"p50", "max", "mean"}
    assert mg["approval_visible_everywhere_ms"]["decision_before"] == "deny"
    assert mg["approval_visible_everywhere_ms"]["streak_of_allows_ms"] is not None
    rollout = mg["policy_rollout"]  # `bastion policy import` exists: always measured
    assert rollout["status"] == "ok", rollout
    assert rollout["decision_before"] == "allow"
    assert rollout["rules"] == cfg.rollout_rules and rollout["every_worker_ms"] is not None

    # 4. Profile: produced when pyinstrument is installed (the bench extra, `make bench`), else
    # skipped with the reason (`make test` installs the test lock only). Which one is decided by
    # this environment, never by the outcome.
    pr = on_disk["profile"]
    if importlib.util.find_spec("pyinstrument") is not None:
        assert pr["status"] == "ok", pr
        assert pr["top"]["samples"] > 0 and pr["top"]["by_self"]
    else:
        assert pr["status"] == "skipped" and "pyinstrument" in pr["reason"], pr

    # 2. In process: every size and the many-orgs case, every outcome as expected.
    ip = on_disk["inprocess"]
    assert ip["status"] == "ok"
    assert set(ip["sizes"]) == {str(n) for n in cfg.scale_sizes}
    for entry in ip["sizes"].values():
        assert entry["pipeline_us"]["wrong_outcomes"] == 0
        assert entry["pipeline_us"]["decisions"] == cfg.scale_decisions * cfg.scale_rounds
        assert entry["casbin_enforce_us"]["wrong_outcomes"] == 0
    assert ip["orgs"]["pipeline_us"]["wrong_outcomes"] == 0
    assert ip["ratio_largest_to_smallest_p50"] is not None

    summary = (cfg.out / "SUMMARY.md").read_text()
    for heading in ("## Targets", "## 1. Decision throughput", "## 2. Policy scale", "## 3. Round trips",
                    "## 4. Profile", "## 5. Management"):
        assert heading in summary
