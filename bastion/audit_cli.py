"""``bastion audit verify FILE.jsonl --jwks URL_OR_FILE``: verify an audit export offline.

Needs no database and no server: the export (``GET /api/v1/orgs/{org_id}/audit/export``)
holds the events, their chain hashes and the signed checkpoints; the JWKS
(``/.well-known/jwks.json``, or a saved copy) holds the public keys. Exit 0 and one JSON line
on stdout when valid; exit 1 and a readable problem line on stderr (plus the JSON line) when
not; exit 2 when the file or the JWKS cannot be read.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("audit", help="audit trail tools (offline verification of an export)")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="verify an audit export (JSONL) against the gateway's public keys")
    v.add_argument("file", help="the export file (JSON Lines); - for stdin")
    v.add_argument("--jwks", required=True, help="JWKS URL (http/https) or file with the gateway's public keys")
    return p


def load_jwks(source: str) -> dict[str, Ed25519PublicKey]:
    if source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=10) as resp:  # an operator-given URL
            raw = resp.read()
    else:
        raw = Path(source).read_bytes()
    data = json.loads(raw)
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in data.get("keys", []) if isinstance(data, dict) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = str(jwk.get("x", ""))
        try:
            public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
        except ValueError:
            continue
        if isinstance(jwk.get("kid"), str):
            keys[jwk["kid"]] = public
    if not keys:
        raise ValueError("no Ed25519 keys in the JWKS")
    return keys


def run(args: argparse.Namespace) -> int:
    # The pure verifier only: no database library is needed (or imported) to check an export.
    from audit.export import verify_export

    try:
        keys = load_jwks(args.jwks)
    except Exception as exc:
        print(f"bastion: audit verify: cannot read the JWKS {args.jwks}: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        return 2
    try:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            lines = Path(args.file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"bastion: audit verify: cannot read {args.file}: {type(exc).__name__}", file=sys.stderr)
        return 2
    result = verify_export(lines, keys.get)
    print(json.dumps(result.as_dict()), flush=True)
    if result.valid:
        return 0
    where = f" (first invalid event: {result.first_invalid_event_id})" if result.first_invalid_event_id else ""
    print(f"bastion: audit verify: INVALID: {result.problem}{where}", file=sys.stderr, flush=True)
    return 1
