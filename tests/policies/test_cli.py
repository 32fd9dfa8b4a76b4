"""``bastion policy test|export|import``: exit codes, readable diffs, the shipped example
files, and rule sets moved through files (both backends)."""
from __future__ import annotations

import asyncio
import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.cli import main

# The files shipped in the `policies` package (package data): the installed copy, so the suite
# proves the wheel carries them.
SHIPPED = Path(importlib.import_module("policies").__file__).parent  # type: ignore[arg-type]
EXAMPLE_TESTS = SHIPPED / "example_tests.yaml"
DEFAULT_RULES = SHIPPED / "default_rules.yaml"


def test_the_shipped_example_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(EXAMPLE_TESTS)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().endswith("passed, 0 failed")
    assert main(["policy", "test", str(EXAMPLE_TESTS), "--rules", str(DEFAULT_RULES)]) == 0


def test_the_shipped_rule_set_is_documented_and_valid() -> None:
    from policies.rules import load_rules_file

    rules = load_rules_file(DEFAULT_RULES)
    assert {r.effect for r in rules} == {"allow", "deny", "escalate"}
    assert all(r.description for r in rules)
    assert DEFAULT_RULES.read_text().count("#") > 10  # commented


def _tests_file(tmp_path: Path, expect: dict[str, Any], rules: list[dict[str, Any]] | None = None) -> Path:
    doc: dict[str, Any] = {
        "agents": [{"uapk_id": "support-bot", "team": "support", "approved": ["crm:*"]}],
        "cases": [
            {"name": "read ok", "request": {"uapk_id": "support-bot", "action": {"tool": "crm", "type": "read"}},
             "expect": {"decision": "allow"}},
            {"name": "delete", "request": {"uapk_id": "support-bot", "action": {"tool": "crm", "type": "delete"}},
             "expect": expect},
        ],
    }
    if rules is not None:
        doc["rules"] = rules
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


NO_DELETE = [{"id": "no-delete", "subject": "team:support", "capability": "crm:delete", "effect": "deny"}]


def test_exit_codes_and_readable_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _tests_file(tmp_path, {"decision": "deny", "reason": "policy_denied", "rule": "no-delete"}, NO_DELETE)
    assert main(["policy", "test", str(ok)]) == 0
    assert "2 cases: 2 passed, 0 failed" in capsys.readouterr().out

    bad = _tests_file(tmp_path, {"decision": "allow", "reason": "all_checks_passed"}, NO_DELETE)
    assert main(["policy", "test", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "PASS  read ok" and out[1] == "FAIL  delete"
    assert out[2].split() == ["expected:", "decision=allow", "reason=all_checks_passed"]
    assert out[3].split() == ["actual:", "decision=deny", "reason=policy_denied"]
    assert "- decision: expected 'allow', got 'deny'" in out[4]
    assert out[-1] == "2 cases: 1 passed, 1 failed"


def test_rules_from_a_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _tests_file(tmp_path, {"decision": "deny", "rule": "no-delete"})
    rules = tmp_path / "rules.csv"
    rules.write_text("# comment\np, team:support, crm:delete, deny, , no-delete\n")
    assert main(["policy", "test", str(cases), "--rules", str(rules)]) == 0
    rules.write_text("p, team:sales, crm:delete, deny, , no-delete\n")  # another team: delete allowed
    assert main(["policy", "test", str(cases), "--rules", str(rules)]) == 1


@pytest.mark.parametrize("content,needle", [
    ("cases: [", "not valid YAML"),
    ("agents: []\nrules: []\ncases: []\n", "cases"),
    ("agents: []\nrules: [{subject: nobody, capability: crm:read, effect: deny}]\ncases: [{request: {}, expect: {decision: allow}}]\n",
     "rules.0.subject"),
    ("rules: []\ncases: [{request: {uapk_id: ab, action: {tool: a, type: b}}, expect: {decision: allow}}]\n", "agents"),
    ("agents: []\nrules: []\nbogus: 1\n", "bogus"),
])
def test_invalid_files_exit_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                            needle: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(content)
    assert main(["policy", "test", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bastion: policy: ") and needle in err and len(err.strip().splitlines()) == 1


def test_missing_file_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


# --- with a database -----------------------------------------------------------------------
def _env(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setenv("BASTION_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("BASTION_DATA_DIR", str(settings.data_dir))
    if settings.redis_url:
        monkeypatch.setenv("BASTION_REDIS_URL", settings.redis_url)
    else:
        monkeypatch.delenv("BASTION_REDIS_URL", raising=False)


async def _bootstrap_with_manifest(settings: Any) -> str:
    from store.bootstrap import bootstrap
    from store.runtime import Runtime
    from tests.gateway.factories import add_manifest

    runtime = Runtime.build(settings)
    try:
        result = await bootstrap(runtime, "acme", "Acme", "owner@acme.com", "owner-pass-123")
        await add_manifest(runtime, result.org_id, "support-bot", approved=["crm:*", "email:send"], team="support")
        return result.org_id
    finally:
        await runtime.close()


async def _versions(settings: Any, org_id: str) -> list[Any]:
    from store import policy_rules
    from store.runtime import Runtime

    runtime = Runtime.build(settings)
    try:
        async with runtime.sessions() as session:
            items, _ = await policy_rules.list_versions(session, org_id, 10, 0)
            return items
    finally:
        await runtime.close()


def test_import_export_and_test_against_an_org(settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, settings)
    org_id = asyncio.run(_bootstrap_with_manifest(settings))
    rules_file = tmp_path / "rules.yaml"
    shutil.copy(DEFAULT_RULES, rules_file)
    assert main(["policy", "import", str(rules_file), "--org", "acme", "--author", "alice"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line == {"imported": str(rules_file), "org": "acme", "version": 1, "rules": 5}
    versions = asyncio.run(_versions(settings, org_id))
    assert versions[0].author == "alice" and versions[0].change == "import rules.yaml"

    # export as CSV, re-import: the same rules, a new version
    out_csv = tmp_path / "exported.csv"
    assert main(["policy", "export", "--org", "acme", "--output", str(out_csv)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert out_csv.read_text().count("\np, ") == 5
    assert main(["policy", "import", str(out_csv), "--org", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert main(["policy", "export", "--org", "acme", "--format", "yaml"]) == 0
    exported = yaml.safe_load(capsys.readouterr().out)["rules"]
    from policies.rules import load_rules_file

    assert [r["id"] for r in exported] == [r.id for r in load_rules_file(DEFAULT_RULES)]
    assert main(["policy", "export", "--org", "acme", "--version", "9"]) == 1
    assert "no policy version 9" in capsys.readouterr().err

    # the org's live rules and manifests, cases from a file
    cases = _tests_file(tmp_path, {"decision": "deny", "rule": "support-never-deletes-crm"})
    assert main(["policy", "test", str(cases), "--org", "acme"]) == 0
    assert main(["policy", "test", str(cases), "--org", "nope"]) == 1
    assert "no organization" in capsys.readouterr().err

    # a shadow import leaves the live version alone
    empty = tmp_path / "empty.yaml"
    empty.write_text("rules: []\n")
    assert main(["policy", "import", str(empty), "--org", "acme", "--shadow"]) == 0
    assert json.loads(capsys.readouterr().out)["shadow_version"] == 1
    assert [v.version for v in asyncio.run(_versions(settings, org_id))] == [2, 1]


async def _audit_of(settings: Any, org_id: str) -> tuple[list[Any], Any]:
    from store import audit as audit_repo
    from store.runtime import Runtime

    runtime = Runtime.build(settings)
    try:
        async with runtime.sessions() as session:
            rows, _ = await audit_repo.list_events(session, org_id, audit_repo.EventFilter(), 100, 0)
        return rows, await audit_repo.verify_org(runtime.sessions, org_id, runtime.keys)
    finally:
        await runtime.close()


def test_a_cli_import_is_audited_in_the_chain(settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every policy version is an audit event, also when made by `bastion policy import`
    (no server, so no audit writer: the CLI appends to the chain itself)."""
    _env(monkeypatch, settings)
    org_id = asyncio.run(_bootstrap_with_manifest(settings))
    rules_file = tmp_path / "rules.yaml"
    shutil.copy(DEFAULT_RULES, rules_file)
    assert main(["policy", "import", str(rules_file), "--org", "acme", "--author", "alice"]) == 0
    assert main(["policy", "import", str(rules_file), "--org", "acme", "--shadow"]) == 0
    capsys.readouterr()
    rows, verdict = asyncio.run(_audit_of(settings, org_id))
    kinds = sorted(r.kind for r in rows if r.kind.startswith("policy."))
    assert kinds == ["policy.replaced", "policy.shadow_deployed"], kinds
    assert all(r.actor.startswith("cli:") for r in rows if r.kind.startswith("policy."))
    assert verdict.valid, verdict
