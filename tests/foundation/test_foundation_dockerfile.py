"""The Dockerfile, checked statically (no Docker engine in the test environment)."""
from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_slim_base_non_root_user_and_public_bind() -> None:
    ins = _instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] == "bastion"
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "BASTION_HOST=0.0.0.0" in env and "BASTION_DATA_DIR=/data" in env
    assert ("VOLUME", '["/data"]') in ins
    cmd = json.loads(next(rest for word, rest in ins if word == "CMD"))
    assert cmd == ["bastion", "serve"]
    # USER comes after every RUN: nothing runs as root at run time.
    last_run = max(i for i, (w, _) in enumerate(ins) if w == "RUN")
    assert max(i for i, (w, _) in enumerate(ins) if w == "USER") > last_run


def test_healthcheck_probes_healthz_with_valid_python() -> None:
    hc = next(rest for word, rest in _instructions() if word == "HEALTHCHECK")
    exec_form = json.loads(hc[hc.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    code = exec_form[2]
    ast.parse(code)  # it is valid Python
    assert "/healthz" in code and "urllib.request" in code and "127.0.0.1" in code


def test_every_package_is_copied_into_the_image() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = {src for word, rest in _instructions() if word == "COPY" for src in rest.split()[:-1]}
    assert packages <= sources, packages - sources
    assert {"pyproject.toml", "README.md"} <= sources
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not packages & set(ignored)
    assert ".venv" in ignored and "data" in ignored and ".git" in ignored


def test_dependencies_come_from_the_lock_with_hashes_and_the_project_without_them() -> None:
    """Like `make test`: the locked runtime dependencies (hashes checked), the locked build
    backend, then the project with --no-deps and no build isolation (nothing unpinned fetched)."""
    ins = _instructions()
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    runs = [rest for word, rest in ins if word == "RUN"]
    assert ["requirements", "./requirements"] in copies
    deps = next(i for i, r in enumerate(runs) if "requirements/run.txt" in r)
    assert "--require-hashes" in runs[deps] and "-r requirements/build.txt" in runs[deps]
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install [^&]*\.(\s|$)", r))
    assert project > deps
    assert "--no-deps" in runs[project] and "--no-build-isolation" in runs[project]
    assert "-e " not in runs[project] and "--editable" not in runs[project]
    # Every pip install names a lock file or is the project's own --no-deps install.
    for r in runs:
        for cmd in re.findall(r"pip install[^&]*", r):
            assert "--require-hashes" in cmd or "--no-deps ." in cmd or cmd.rstrip().endswith("."), cmd
    # The lock files are in the build context.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "requirements" not in ignored
    for lock in ("run.txt", "build.txt"):
        assert "--hash=sha256:" in (ROOT / "requirements" / lock).read_text()
