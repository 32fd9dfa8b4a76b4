"""``bastion audit verify`` needs no database library: the pure audit package (audit/) checks an
export on a machine where SQLAlchemy (and Redis, and Litestar) cannot even be imported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.test_chain_vectors import JWKS, _vector_export

# Runs the CLI with the server's libraries poisoned: any import of them fails.
PRELUDE = """
import runpy, sys
for name in ("sqlalchemy", "redis", "litestar", "asyncpg", "aiosqlite"):
    sys.modules[name] = None  # `import name` now raises ImportError
sys.argv = ["bastion", *sys.argv[1:]]
runpy.run_module("bastion.cli", run_name="__main__")
"""


def _verify(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    export, jwks = tmp_path / "audit.jsonl", tmp_path / "jwks.json"
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    jwks.write_text(json.dumps(JWKS), encoding="utf-8")
    return subprocess.run([sys.executable, "-c", PRELUDE, "audit", "verify", str(export), "--jwks", str(jwks)],
                          capture_output=True, text=True, timeout=60)


def test_the_poison_works(tmp_path: Path) -> None:
    probe = PRELUDE.replace('runpy.run_module("bastion.cli", run_name="__main__")', "import sqlalchemy")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "import of sqlalchemy halted" in res.stderr


def test_verify_runs_without_sqlalchemy(tmp_path: Path) -> None:
    ok = _verify(tmp_path, _vector_export())
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert (out["valid"], out["checked"], out["first_seq"], out["last_seq"], out["start"]) == (True, 3, 1, 3, "genesis")
    assert out["last_checkpoint"]["seq"] == 3 and out["last_checkpoint"]["kid"] == "vector-key-1"


def test_tampering_is_detected_without_sqlalchemy(tmp_path: Path) -> None:
    lines = [json.loads(x) for x in _vector_export()]
    lines[3]["event"]["details"]["amount"] = 15005  # an event altered, its hash left as it was
    res = _verify(tmp_path, [json.dumps(x) for x in lines])
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("bastion: audit verify: INVALID: event at seq 2 does not match its recorded hash")
    assert json.loads(res.stdout)["valid"] is False
