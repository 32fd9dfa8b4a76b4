"""``bastion`` command: serve, migrate, bootstrap (and more as features land).

Output contract: a command's result is one JSON line on stdout; a failure is one line on
stderr (``bastion: ...``) and a non-zero exit, never a traceback (set BASTION_LOG_LEVEL=DEBUG
to get the traceback as well). Configuration errors exit 2 and name the variable. A command
that used the configuration ends, on success, with one line on stderr naming the data
directory and the database it used (``serve`` logs them at start-up instead).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from core.settings import ConfigError, Settings, load_settings


def _die(line: str, code: int = 2) -> NoReturn:
    if os.environ.get("BASTION_LOG_LEVEL", "").upper() == "DEBUG" and sys.exc_info()[0] is not None:
        traceback.print_exc()
    # One line, whatever the exception text held.
    print(" ".join(line.split()), file=sys.stderr, flush=True)
    raise SystemExit(code)


# The settings the running command loaded (main() names their data directory at the end).
_loaded: Settings | None = None


def _settings() -> Settings:
    global _loaded
    try:
        _loaded = load_settings()
    except ConfigError as exc:
        _die(f"bastion: configuration error: {exc}")
    return _loaded


def where(settings: Settings) -> str:
    """The data directory and database a command used (absolute: the same from any folder)."""
    line = f"bastion: data directory {settings.data_dir} (database {_redact(settings.database_url)})"
    hint = _old_default_hint(settings)
    return f"{line}; {hint}" if hint else line


def _old_default_hint(settings: Settings) -> str | None:
    """Before the data directory had an absolute default it was ./data: point at a database
    left there, instead of silently starting afresh."""
    if "BASTION_DATA_DIR" in os.environ:
        return None
    old = Path("data").absolute()
    if old != settings.data_dir and (old / "bastion.db").is_file():
        return f"note: {old / 'bastion.db'} is not used (the default is no longer ./data); set BASTION_DATA_DIR={old} to use it"
    return None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


def _quiet_logging() -> None:
    """Commands whose stdout is a result: logs (Alembic's included) go to stderr, warnings only."""
    from httpkit.context import configure_logging

    configure_logging("WARNING", sys.stderr)


def _prepare_files(settings: Settings) -> None:
    """Data dir, signing keys and the API-key pepper exist and are usable (created on first
    run), before any worker starts, so all workers share them."""
    from store.keystore import KeyStore, load_pepper

    if not settings.signing_key_file or not settings.api_key_pepper or settings.is_sqlite:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            probe = settings.data_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            _die(f"bastion: configuration error: BASTION_DATA_DIR: {settings.data_dir} is not a writable directory ({_why(exc)})")
    key_path = Path(settings.signing_key_file) if settings.signing_key_file else settings.data_dir / "signing-keys.json"
    try:
        KeyStore.load_or_create(key_path)
    except Exception as exc:  # unreadable, not JSON/PEM, not Ed25519
        var = "BASTION_SIGNING_KEY_FILE" if settings.signing_key_file else "BASTION_DATA_DIR"
        _die(f"bastion: configuration error: {var}: cannot use signing keys at {key_path} ({_why(exc)})")
    try:
        load_pepper(settings.data_dir, settings.api_key_pepper)
    except OSError as exc:
        _die(f"bastion: configuration error: BASTION_DATA_DIR: cannot create the API-key pepper ({_why(exc)})")


def _migrate(settings: Settings) -> None:
    from store.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        _die(
            "bastion: configuration error: BASTION_DATABASE_URL: cannot migrate "
            f"{_redact(settings.database_url)} ({_why(exc)})"
        )


def cmd_migrate(args: argparse.Namespace) -> int:
    _quiet_logging()
    settings = _settings()
    _migrate(settings)
    print(json.dumps({"migrated": True, "database": _redact(settings.database_url)}), flush=True)
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def check_bootstrap_args(slug: str, name: str, email: str, password: str) -> list[tuple[str, str]]:
    """The same rules as the API (organizations and members). Returns (field, issue) pairs."""
    from api.validation import EMAIL, SLUG, has_control_chars

    issues: list[tuple[str, str]] = []
    if not SLUG.match(slug):
        issues.append(("org-slug", "2-63 lowercase letters, digits and hyphens, starting with a letter or digit"))
    if not name.strip() or len(name) > 200 or has_control_chars(name):
        issues.append(("org-name", "1-200 characters, no control characters"))
    if not EMAIL.match(email.strip()):
        issues.append(("admin-email", "not a valid email address"))
    if not 8 <= len(password) <= 1024:
        issues.append(("admin-password", "must be between 8 and 1024 characters"))
    return issues


async def _bootstrap(
    settings: Settings, slug: str, name: str, email: str, password: str, issue_key: str = "always"
) -> dict[str, str]:
    from store.bootstrap import bootstrap
    from store.runtime import Runtime

    runtime = Runtime.build(settings)
    try:
        result = await bootstrap(runtime, slug, name, email, password, issue_key=issue_key)
    finally:
        await runtime.engine.dispose()
        if runtime.redis is not None:
            await runtime.redis.aclose()
    return {"org_id": result.org_id, "user_id": result.user_id, "api_key": result.api_key}


def _run_bootstrap(settings: Settings, slug: str, name: str, email: str, password: str, issue_key: str) -> dict[str, str]:
    from store.bootstrap import BootstrapConflict

    try:
        return asyncio.run(_bootstrap(settings, slug, name, email, password, issue_key))
    except BootstrapConflict as exc:
        _die(f"bastion: bootstrap refused: {exc}", 1)
    except Exception as exc:
        _die(f"bastion: bootstrap failed: database {_redact(settings.database_url)} ({_why(exc)})", 1)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    _quiet_logging()
    settings = _settings()
    issues = check_bootstrap_args(args.org_slug, args.org_name, args.admin_email, args.admin_password)
    if issues:
        _die("bastion: bootstrap: " + "; ".join(f"--{f}: {i}" for f, i in issues))
    _prepare_files(settings)
    _migrate(settings)
    out = _run_bootstrap(settings, args.org_slug, args.org_name, args.admin_email, args.admin_password, "always")
    print(json.dumps(out), flush=True)
    return 0


_BOOTSTRAP_VARS = {
    "org-slug": "BASTION_BOOTSTRAP_ORG_SLUG",
    "org-name": "BASTION_BOOTSTRAP_ORG_NAME",
    "admin-email": "BASTION_BOOTSTRAP_ADMIN_EMAIL",
    "admin-password": "BASTION_BOOTSTRAP_ADMIN_PASSWORD",
}


def startup_bootstrap(settings: Settings) -> dict[str, Any] | None:
    """BASTION_BOOTSTRAP_*: create the org and its owner on first start (for containers).
    Prints one JSON line with the owner key the first time; later starts issue no key."""
    if not settings.bootstrap_org_slug:
        return None
    slug = settings.bootstrap_org_slug
    name = settings.bootstrap_org_name or ""
    email = settings.bootstrap_admin_email or ""
    password = settings.bootstrap_admin_password or ""
    issues = check_bootstrap_args(slug, name, email, password)
    if issues:
        field, issue = issues[0]
        _die(f"bastion: configuration error: {_BOOTSTRAP_VARS[field]}: {issue}")
    out = _run_bootstrap(settings, slug, name, email, password, "if_created")
    line: dict[str, Any] = {"bootstrap": {"org_id": out["org_id"], "user_id": out["user_id"]}}
    if out["api_key"]:
        line["bootstrap"]["api_key"] = out["api_key"]
    print(json.dumps(line), flush=True)
    return line


def uvicorn_proxy_options(settings: Settings) -> dict[str, Any]:
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": list(settings.trusted_proxies)}


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    from httpkit.context import configure_logging

    configure_logging(settings.log_level)
    _prepare_files(settings)
    _migrate(settings)
    startup_bootstrap(settings)
    factory = "gateway.standalone:asgi" if args.only == "gateway" else "bastion.app:asgi"
    logging.getLogger("bastion").info(
        "serving",
        extra={"fields": {"url": f"http://{settings.host}:{settings.port}", "workers": settings.workers, "only": args.only,
                          "data_dir": str(settings.data_dir), "database": _redact(settings.database_url),
                          "redis": bool(settings.redis_url)}},
    )
    hint = _old_default_hint(settings)
    if hint:
        logging.getLogger("bastion").warning(hint)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="warning",
        access_log=False,
        log_config=None,
        loop="auto",
        http="auto",
        lifespan="on",
        # The client address (login throttling, logs) comes from X-Forwarded-For only when the
        # peer is a trusted proxy; with none configured the header is ignored.
        **uvicorn_proxy_options(settings),
        server_header=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bastion", description="Authorization gateway for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="apply migrations and serve the gateway and management API")
    p.add_argument("--only", choices=["all", "gateway"], default="all", help="serve only the gateway")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("bootstrap", help="create an organization, its owner and an owner API key")
    p.add_argument("--org-slug", required=True)
    p.add_argument("--org-name", required=True)
    p.add_argument("--admin-email", required=True)
    p.add_argument("--admin-password", required=True)
    p.set_defaults(func=cmd_bootstrap)
    from bastion import keys_cli

    keys_cli.register(sub).set_defaults(func=lambda a: keys_cli.run(a, _settings()))
    from bastion import audit_cli

    audit_cli.register(sub).set_defaults(func=audit_cli.run)
    from bastion import policy_cli
    policy_cli.register(sub).set_defaults(func=lambda a: policy_cli.run(a, _settings))
    args = parser.parse_args(argv)
    global _loaded
    _loaded = None
    code = int(args.func(args) or 0)
    if code == 0 and _loaded is not None and args.command != "serve":
        print(where(_loaded), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
