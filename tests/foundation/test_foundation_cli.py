"""The ``bastion`` command, run as a user runs it: a subprocess with environment variables."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import serve_app


def bastion_cmd() -> list[str]:
    exe = shutil.which("bastion", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "bastion.cli"]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_DATA_DIR"] = str(tmp / "data")
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bastion_cmd() + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


BAD_VALUES = [
    ("BASTION_PORT", "abc"),
    ("BASTION_PORT", "70000"),
    ("BASTION_HOST", "bad host"),
    ("BASTION_WORKERS", "0"),
    ("BASTION_WORKERS", "4"),  # more than one worker without Redis
    ("BASTION_DATABASE_URL", "mysql://localhost/db"),
    ("BASTION_REDIS_URL", "http://localhost:6379"),
    ("BASTION_LOG_LEVEL", "LOUD"),
    ("BASTION_RATE_STANDARD_BURST", "-1"),
    ("BASTION_API_MAX_BODY", "10"),
    ("BASTION_RATE_LIMITS_ENABLED", "maybe"),
    ("BASTION_SESSION_TTL_SECONDS", "1e3"),
    ("BASTION_BOOTSTRAP_ORG_SLUG", "acme"),  # without the other BASTION_BOOTSTRAP_* variables
]


def assert_one_line_naming(proc: subprocess.CompletedProcess[str], var: str) -> None:
    assert proc.returncode != 0, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert var in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == "", proc.stdout


@pytest.mark.parametrize("var,value", BAD_VALUES)
def test_bad_value_stops_serve_with_one_line(tmp_path: Path, var: str, value: str) -> None:
    proc = run(["serve"], clean_env(tmp_path, **{var: value}), tmp_path)
    assert_one_line_naming(proc, var)
    assert proc.returncode == 2


@pytest.mark.parametrize("var,value", [("BASTION_PORT", "abc"), ("BASTION_DATABASE_URL", "mysql://x"), ("BASTION_WORKERS", "4")])
def test_bad_value_stops_migrate_with_one_line(tmp_path: Path, var: str, value: str) -> None:
    assert_one_line_naming(run(["migrate"], clean_env(tmp_path, **{var: value}), tmp_path), var)


def closed_port() -> int:
    return free_port()


def test_unusable_resources_stop_start_up_with_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    junk = tmp_path / "keys.pem"
    junk.write_text("this is not a key")
    cases = [
        ("BASTION_DATABASE_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nope", ["migrate"]),
        ("BASTION_DATABASE_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nope", ["serve"]),
        ("BASTION_DATA_DIR", str(a_file / "data"), ["serve"]),
        ("BASTION_SIGNING_KEY_FILE", str(junk), ["serve"]),
        ("BASTION_BOOTSTRAP_ADMIN_EMAIL", "not-an-email", ["serve"]),
    ]
    for var, value, args in cases:
        extra = {var: value}
        if var == "BASTION_BOOTSTRAP_ADMIN_EMAIL":
            extra.update(BASTION_BOOTSTRAP_ORG_SLUG="acme", BASTION_BOOTSTRAP_ORG_NAME="Acme",
                         BASTION_BOOTSTRAP_ADMIN_PASSWORD="long-enough-1")
        proc = run(args, clean_env(tmp_path, **extra), tmp_path)
        assert_one_line_naming(proc, var)


def test_migrate_prints_one_json_line_and_is_repeatable(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    for _ in range(2):
        proc = run(["migrate"], env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["migrated"] is True
    assert (tmp_path / "data" / "bastion.db").exists()


def _bootstrap_env(tmp_path: Path, settings: Any) -> dict[str, str]:
    env = clean_env(tmp_path, BASTION_DATABASE_URL=settings.database_url, BASTION_DATA_DIR=str(settings.data_dir))
    if settings.redis_url:
        env["BASTION_REDIS_URL"] = settings.redis_url
    return env


async def test_bootstrap_is_idempotent_and_prints_exactly_one_json_line(tmp_path: Path, settings: Any) -> None:
    from bastion.app import create_app

    env = _bootstrap_env(tmp_path, settings)
    args = ["bootstrap", "--org-slug", "initech", "--org-name", "Initech", "--admin-email", "Boss@Initech.com",
            "--admin-password", "tps-report-99"]
    first = run(args, env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.endswith("\n") and first.stdout.count("\n") == 1, repr(first.stdout)
    one = json.loads(first.stdout)
    assert set(one) == {"org_id", "user_id", "api_key"} and one["api_key"].startswith("bst_")
    second = run(args, env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("\n") == 1
    two = json.loads(second.stdout)
    assert (two["org_id"], two["user_id"]) == (one["org_id"], one["user_id"])
    assert two["api_key"] != one["api_key"]
    # Both keys are owner keys of that org; there is one org and one member.
    app = create_app(settings)
    async with serve_app(app) as c:
        for key in (one["api_key"], two["api_key"]):
            r = await c.get(f"/api/v1/orgs/{one['org_id']}", headers={"X-API-Key": key})
            assert r.status_code == 200 and r.json()["role"] == "owner" and r.json()["slug"] == "initech"
        r = await c.get(f"/api/v1/orgs/{one['org_id']}/users", headers={"X-API-Key": one["api_key"]})
        assert [(m["email"], m["role"]) for m in r.json()["items"]] == [("boss@initech.com", "owner")]
        r = await c.post("/api/v1/auth/login", json={"email": "boss@initech.com", "password": "tps-report-99"})
        assert r.status_code == 200
    # A different password for the existing user is refused, with one line and nothing on stdout.
    bad = run(args[:-1] + ["another-password"], env, tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr


def test_bootstrap_rejects_invalid_arguments_in_one_line(tmp_path: Path) -> None:
    proc = run(["bootstrap", "--org-slug", "Not A Slug", "--org-name", "X", "--admin-email", "nope",
                "--admin-password", "short"], clean_env(tmp_path), tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "--org-slug" in line and "--admin-email" in line and "--admin-password" in line


def _wait_healthy(url: str, proc: subprocess.Popen[str], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.returncode} {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(bastion_cmd() + ["serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


@pytest.mark.slow
def test_serve_bootstraps_from_the_environment_once_and_logs_json(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        tmp_path, BASTION_PORT=str(port), BASTION_BOOTSTRAP_ORG_SLUG="hooli", BASTION_BOOTSTRAP_ORG_NAME="Hooli",
        BASTION_BOOTSTRAP_ADMIN_EMAIL="gavin@hooli.com", BASTION_BOOTSTRAP_ADMIN_PASSWORD="nucleus-123",
    )
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, env)
    try:
        _wait_healthy(url, proc)
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        r = httpx.get(url + "/nope", headers={"X-Request-ID": "cli-test-1"}, timeout=5)
        assert r.status_code == 404 and r.json()["request_id"] == "cli-test-1"
    finally:
        first_out, first_err = _stop(proc)
    lines = [json.loads(line) for line in first_out.splitlines()]  # every stdout line is JSON
    boot = [line["bootstrap"] for line in lines if "bootstrap" in line]
    assert len(boot) == 1 and boot[0]["api_key"].startswith("bst_")
    access = [line for line in lines if line.get("logger") == "bastion.access"]
    assert any(a["request_id"] == "cli-test-1" and a["status"] == 404 for a in access)
    assert "Traceback" not in first_err

    # A restart finds the org and the owner: same ids, and no new key is minted or printed.
    proc = _serve(tmp_path, env)
    try:
        _wait_healthy(url, proc)
        r = httpx.get(f"{url}/api/v1/orgs/{boot[0]['org_id']}/api-keys", headers={"X-API-Key": boot[0]["api_key"]}, timeout=5)
        assert r.status_code == 200 and r.json()["total"] == 1
    finally:
        out, _ = _stop(proc)
    again = [json.loads(line)["bootstrap"] for line in out.splitlines() if "bootstrap" in json.loads(line)]
    assert again == [{"org_id": boot[0]["org_id"], "user_id": boot[0]["user_id"]}]
