"""``bastion keys list|rotate|retire KID``: manage the Ed25519 signing keys.

Rotation adds a key and makes it the signing key; tokens signed by older keys keep verifying
(their public keys stay in the JWKS) until the key is retired. Running servers pick the
change up within a few seconds (they watch the key file)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.settings import Settings
from store.keystore import KeyStore


def _store(settings: Settings) -> KeyStore:
    path = Path(settings.signing_key_file) if settings.signing_key_file else settings.data_dir / "signing-keys.json"
    return KeyStore.load_or_create(path)


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    if args.keys_command == "list":
        print(json.dumps({"active": store.active_kid, "keys": [{"kid": k.kid, "created_at": k.created_at} for k in store.keys()]}))
        return 0
    if store.path is None:
        print("bastion: keys: BASTION_SIGNING_KEY_FILE is a single PEM key; rotate by replacing the file", file=sys.stderr)
        return 1
    if args.keys_command == "rotate":
        kid = store.rotate()
        print(json.dumps({"active": kid, "keys": [k.kid for k in store.keys()]}))
        return 0
    try:
        store.retire(args.kid)
    except KeyError:
        print(f"bastion: keys: no key with kid {args.kid!r}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"bastion: keys: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"retired": args.kid, "keys": [k.kid for k in store.keys()]}))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("keys", help="list, rotate or retire the token signing keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    ks.add_parser("list", help="show the key ids and which one signs")
    ks.add_parser("rotate", help="add a new signing key; old tokens keep verifying")
    r = ks.add_parser("retire", help="remove a key (tokens it signed stop verifying)")
    r.add_argument("kid")
    return p
