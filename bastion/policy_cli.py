"""``bastion policy test|export|import``: policy rules as files (docs/policies.md).

* ``bastion policy test FILE.yaml [--org SLUG_OR_ID | --rules FILE]`` runs the file's cases and
  prints one line per case (``PASS``/``FAIL``) with an expected/actual diff for failures.
  Exit 0 when every case passes, 1 otherwise (a failing case, or a file that is not valid).
  Rules: ``--rules FILE`` (YAML or Casbin CSV), else the test file's ``rules`` /
  ``rules_file``, else (with ``--org``) the organization's live rules. Agents: the test
  file's ``agents`` (no database needed), or with ``--org`` the organization's manifests.
* ``bastion policy export --org SLUG_OR_ID [--format yaml|csv] [--version N] [--output FILE]``
* ``bastion policy import --org SLUG_OR_ID FILE [--format yaml|csv] [--shadow] [--author NAME]``
  publishes the file as a new live version (or deploys it as the shadow set).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from core.errors import ValidationFailed


def _fail(message: str, code: int = 1) -> int:
    print(" ".join(f"bastion: policy: {message}".split()), file=sys.stderr, flush=True)
    return code


def _issues(exc: ValidationFailed) -> str:
    details = "; ".join(f"{d.field}: {d.issue}" for d in exc.details[:10])
    return f"{exc.message} {details}".strip()


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValidationFailed(f"{path} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None


def _read_rules(path: Path, fmt: str | None = None) -> list[Any]:
    from policies.rules import parse_rules_text

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    if fmt is None and path.suffix.lower() == ".csv":
        fmt = "csv"
    elif fmt is None and path.suffix.lower() in (".yaml", ".yml"):
        fmt = "yaml"
    return parse_rules_text(text, fmt)


# --- database access (export, import, --org) ----------------------------------------------
async def _with_org(settings: Any, slug: str, fn: Any) -> Any:
    """``--org`` is an organization's slug or its id."""
    from bastion.cli import _redact
    from store.accounts import get_org, get_org_by_slug
    from store.runtime import Runtime

    runtime = Runtime.build(settings)
    try:
        async with runtime.sessions() as session:
            org = await get_org_by_slug(session, slug) or (await get_org(session, slug) if len(slug) <= 36 else None)
        if org is None:
            raise ValidationFailed(f"no organization with slug or id {slug!r} in {_redact(settings.database_url)}")
        return await fn(runtime, org.id)
    finally:
        await runtime.close()


async def _org_snapshot(runtime: Any, org_id: str) -> Any:
    from store.compiled_org import load_compiled_org

    s = runtime.settings
    return await load_compiled_org(runtime.sessions, org_id, default_per_hour=s.default_max_actions_per_hour,
                                   default_per_day=s.default_max_actions_per_day)


# --- test ----------------------------------------------------------------------------------
def cmd_test(args: argparse.Namespace, settings_loader: Any) -> int:
    from gateway import policy_eval

    path = Path(args.file)
    try:
        doc = _load_yaml(path)
        if not isinstance(doc, dict):
            raise ValidationFailed(f"{path}: expected a mapping with cases (and agents, rules)")
        unknown = [k for k in doc if k not in ("rules", "rules_file", "agents", "cases", "description")]
        if unknown:
            raise ValidationFailed(f"{path}: unknown key {unknown[0]!r} (rules, rules_file, agents, cases)")
        rules = None
        if args.rules:
            rules = _read_rules(Path(args.rules))
        elif doc.get("rules_file"):
            rules = _read_rules(path.parent / str(doc["rules_file"]))
        elif doc.get("rules") is not None:
            from policies.rules import parse_rules

            rules = parse_rules(doc["rules"], "rules")
        cases = policy_eval.parse_cases(doc.get("cases"), "cases")
        if args.org:
            base = asyncio.run(_with_org(settings_loader(), args.org, _org_snapshot))
        else:
            if doc.get("agents") is None:
                raise ValidationFailed(f"{path}: 'agents' is required without --org")
            if rules is None:
                raise ValidationFailed(f"{path}: no rules: give --rules FILE, or rules / rules_file in the test file")
            base = policy_eval.org_from_agents(doc["agents"], "agents")
        org = policy_eval.with_candidate(base, rules, "file")
        results = asyncio.run(policy_eval.run_cases(org, cases))
    except ValidationFailed as exc:
        return _fail(_issues(exc))
    print(policy_eval.format_results(results), flush=True)
    return 0 if all(r.passed for r in results) else 1


# --- export / import -----------------------------------------------------------------------
def cmd_export(args: argparse.Namespace, settings_loader: Any) -> int:
    from policies.rules import dump_csv, dump_yaml, parse_rules
    from store import policy_rules

    async def fn(runtime: Any, org_id: str) -> tuple[int, list[Any]]:
        async with runtime.sessions() as session:
            if args.version is not None:
                v = await policy_rules.get_version(session, org_id, args.version)
                if v is None:
                    raise ValidationFailed(f"no policy version {args.version}")
                return v.version, parse_rules(v.rules)
            return await policy_rules.current_version(session, org_id), await policy_rules.load_rules(session, org_id)

    try:
        version, rules = asyncio.run(_with_org(settings_loader(), args.org, fn))
    except ValidationFailed as exc:
        return _fail(_issues(exc))
    fmt = args.format or ("csv" if args.output and args.output.endswith(".csv") else "yaml")
    header = f"# Bastion policy rules of {args.org}, version {version} (docs/policies.md)\n"
    text = dump_csv(rules) if fmt == "csv" else dump_yaml(rules, header)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(json.dumps({"exported": args.output, "org": args.org, "version": version, "rules": len(rules)}))
    else:
        sys.stdout.write(text)
    return 0


def _cli_audit(runtime: Any, org_id: str, author: str) -> Any:
    """Without a server there is no audit writer: append the change's event to the org's chain
    directly, in the change's own transaction (the chain's head row serializes writers)."""
    from audit.event import build_event
    from store import audit as audit_repo

    async def hook(kind: str, details: dict[str, Any], session: Any) -> None:
        s = runtime.settings
        event = audit_repo.normalize(build_event(org_id=org_id, kind=kind, actor=f"cli:{author}", details=details))
        await audit_repo.append_events(session, org_id, [event], keys=runtime.keys, issuer=s.issuer,
                                       checkpoint_every=s.audit_checkpoint_every)

    return hook


def cmd_import(args: argparse.Namespace, settings_loader: Any) -> int:
    from store import policy_rules

    try:
        rules = _read_rules(Path(args.file), args.format)
    except ValidationFailed as exc:
        return _fail(_issues(exc))

    async def fn(runtime: Any, org_id: str) -> int:
        audit = _cli_audit(runtime, org_id, args.author)
        if args.shadow:
            return await policy_rules.deploy_shadow(runtime, org_id, rules, args.author, audit)  # type: ignore[no-any-return]
        return await policy_rules.replace_rules(  # type: ignore[no-any-return]
            runtime, org_id, rules, args.author, f"import {Path(args.file).name}"[:200], audit)

    try:
        version = asyncio.run(_with_org(settings_loader(), args.org, fn))
    except ValidationFailed as exc:
        return _fail(_issues(exc))
    key = "shadow_version" if args.shadow else "version"
    print(json.dumps({"imported": args.file, "org": args.org, key: version, "rules": len(rules)}))
    return 0


def run(args: argparse.Namespace, settings_loader: Any) -> int:
    return {"test": cmd_test, "export": cmd_export, "import": cmd_import}[args.policy_command](args, settings_loader)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("policy", help="test, export or import organization policy rules")
    ps = p.add_subparsers(dest="policy_command", required=True)
    t = ps.add_parser("test", help="run a YAML file of cases; exit 0 when all pass, 1 otherwise")
    t.add_argument("file")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--org", help="organization slug or id: its manifests (and live rules unless the file has rules)")
    src.add_argument("--rules", help="a rule file (YAML or Casbin CSV); agents come from the test file")
    e = ps.add_parser("export", help="write an organization's rules as YAML or Casbin CSV")
    e.add_argument("--org", required=True, help="organization slug or id")
    e.add_argument("--format", choices=["yaml", "csv"])
    e.add_argument("--version", type=int, help="an older policy version (default: the live one)")
    e.add_argument("--output", "-o")
    i = ps.add_parser("import", help="publish a rule file as a new policy version")
    i.add_argument("file")
    i.add_argument("--org", required=True, help="organization slug or id")
    i.add_argument("--format", choices=["yaml", "csv"])
    i.add_argument("--shadow", action="store_true", help="deploy as the shadow set instead of publishing")
    i.add_argument("--author", default="cli", help="recorded as the version's author (default: cli)")
    return p
