"""``bastion`` command: serve, migrate, bootstrap (and more as features land)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from core.settings import ConfigError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"bastion: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    from store.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    print(json.dumps({"migrated": True, "database": _redact(settings.database_url)}))
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


async def _bootstrap(settings: Settings, slug: str, name: str, email: str, password: str) -> dict[str, str]:
    from store.bootstrap import bootstrap
    from store.runtime import Runtime

    runtime = Runtime.build(settings)
    try:
        result = await bootstrap(runtime, slug, name, email, password)
    finally:
        await runtime.engine.dispose()
        if runtime.redis is not None:
            await runtime.redis.aclose()
    return {"org_id": result.org_id, "user_id": result.user_id, "api_key": result.api_key}


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from store.bootstrap import BootstrapConflict
    from store.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    try:
        out = asyncio.run(_bootstrap(settings, args.org_slug, args.org_name, args.admin_email, args.admin_password))
    except BootstrapConflict as exc:
        print(f"bastion: bootstrap refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from store.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    if settings.bootstrap_org_slug:
        from store.bootstrap import BootstrapConflict

        try:
            out = asyncio.run(
                _bootstrap(
                    settings, settings.bootstrap_org_slug, settings.bootstrap_org_name or "",
                    settings.bootstrap_admin_email or "", settings.bootstrap_admin_password or "",
                )
            )
            print(json.dumps({"bootstrap": out}), flush=True)
        except BootstrapConflict as exc:
            print(f"bastion: bootstrap refused: {exc}", file=sys.stderr)
            return 1
    # Create the signing keys and pepper before workers fork, so they all share them.
    from store.keystore import KeyStore, load_pepper
    from pathlib import Path

    if not settings.signing_key_file:
        KeyStore.load_or_create(settings.data_dir / "signing-keys.json")
    load_pepper(settings.data_dir, settings.api_key_pepper)
    factory = "gateway.standalone:asgi" if args.only == "gateway" else "bastion.app:asgi"
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        lifespan="on",
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
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
