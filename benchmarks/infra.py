"""Processes and services the benchmarks start and stop: a private Redis, a throw-away
PostgreSQL database, the server under test (pinned to its CPUs) and the load generator.

Every process started here is started in its own session and stopped by its own id (its
process group), never by name.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_split() -> tuple[list[int], list[int]]:
    """(server CPUs, load-generator CPUs): the generator gets the last CPU, the server the rest.
    On a single-CPU machine both share it (the summary says so)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) == 1:
        return cpus, cpus
    return cpus[:-1], cpus[-1:]


def _pin(cpus: list[int] | None) -> Any:
    def pre() -> None:
        if cpus:
            os.sched_setaffinity(0, set(cpus))

    return pre


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path
    name: str

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGINT)  # the group we created for it, by id
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_proc(name: str, argv: list[str], env: dict[str, str], cpus: list[int] | None, log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")
    popen = subprocess.Popen(
        argv,
        env=env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_pin(cpus),
    )
    log.close()
    return Proc(popen, log_path, name)


def wait_http(port: int, path: str, proc: Proc, timeout: float = 60.0, method: str = "GET") -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready on :{port} after {timeout}s:\n{proc.log_tail()}")


# --- Redis ---------------------------------------------------------------------------------
@dataclass
class RedisService:
    url: str  # redis://127.0.0.1:PORT/DB
    host: str
    port: int
    db: int
    private: bool
    proc: Proc | None = None
    _counters: Any = None

    def client(self) -> Any:
        import redis

        return redis.Redis(host=self.host, port=self.port, db=self.db)

    def counters_client(self) -> Any:
        """One persistent connection for the counters, so reading them adds exactly one
        command (INFO) and one read event per snapshot, never a connection handshake."""
        if self._counters is None:
            self._counters = self.client()
            self._counters.ping()
        return self._counters

    def stop(self) -> None:
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        if self.proc is not None:
            self.proc.stop()


def start_redis(log_dir: Path, db: int = 9, cpus: list[int] | None = None, shared_url: str | None = None) -> RedisService:
    """A private redis-server on a free loopback port (so INFO commandstats, which is
    server-wide, counts only our traffic); or, given ``shared_url``, that server as is."""
    if shared_url:
        from urllib.parse import urlparse

        u = urlparse(shared_url)
        dbn = int((u.path or "/0").strip("/") or 0)
        svc = RedisService(shared_url, u.hostname or "127.0.0.1", u.port or 6379, dbn, private=False)
        c = svc.client()
        c.flushdb()
        c.close()
        return svc
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: install it or pass --redis-url")
    port = free_port()
    proc = start_proc(
        "redis",
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--databases", "16", "--protected-mode", "yes"],
        dict(os.environ), cpus, log_dir,
    )
    svc = RedisService(f"redis://127.0.0.1:{port}/{db}", "127.0.0.1", port, db, private=True, proc=proc)
    deadline = time.monotonic() + 10
    while True:
        try:
            c = svc.client()
            c.ping()
            c.close()
            return svc
        except Exception:
            if time.monotonic() > deadline or proc.popen.poll() is not None:
                proc.stop()
                raise RuntimeError(f"private redis-server did not start:\n{proc.log_tail()}") from None
            time.sleep(0.05)


def redis_counters(svc: RedisService) -> dict[str, Any]:
    """Server-wide command counts (per command, top-level and inside scripts alike) and
    read events (one per request or pipeline a client sends: the round trips).

    One ``INFO all`` per snapshot on a persistent connection: the difference between two
    snapshots includes exactly one INFO command and one read event of our own
    (``SNAPSHOT_READS``), which callers subtract."""
    info = svc.counters_client().info("all")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
             if k.startswith("cmdstat_") and isinstance(v, dict)}
    return {
        "calls": calls,
        "total_commands": int(info.get("total_commands_processed", 0)),
        "reads": int(info.get("total_reads_processed", 0)),
    }


SNAPSHOT_READS = 1


# --- PostgreSQL ----------------------------------------------------------------------------
@dataclass
class PgDatabase:
    admin_dsn: str  # where CREATE/DROP DATABASE run
    name: str
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{self.name}"

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self, log_statements: bool = True) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        if log_statements:
            # Only sessions of this (throw-away) database log their statements, without bind
            # parameters: how the harness counts SQL statements by kind (statement_counts).
            try:
                asyncio.run(self._admin(f'ALTER DATABASE "{self.name}" SET log_statement = \'all\''))
                asyncio.run(self._admin(f'ALTER DATABASE "{self.name}" SET log_parameter_max_length = 0'))
            except Exception:  # not a superuser: fall back to transaction counts
                pass

    # --- statement counting from the server log (when this process can read it) ----------
    def log_path(self) -> Path | None:
        env = os.environ.get("BENCH_PG_LOG")
        candidates = [Path(env)] if env else sorted(Path("/var/log/postgresql").glob("postgresql-*-main.log"))
        for path in candidates:
            if path.is_file() and os.access(path, os.R_OK):
                return path
        return None

    def log_offset(self) -> int | None:
        path = self.log_path()
        return path.stat().st_size if path else None

    def statement_counts(self, start: int | None, end: int | None) -> dict[str, int] | None:
        """Statements this database's sessions ran between two log offsets, by kind
        ("SELECT org_state", "INSERT audit_events", "txn" for BEGIN/COMMIT/ROLLBACK...)."""
        path = self.log_path()
        if path is None or start is None or end is None:
            return None
        with open(path, "rb") as f:
            f.seek(start)
            chunk = f.read(max(0, end - start)).decode(errors="replace")
        marker = f"@{self.name} LOG:  "
        # A log entry starts with its timestamp; SQL spanning lines continues on the next ones.
        entries: list[str] = []
        for line in chunk.splitlines():
            if _LOG_ENTRY.match(line) or not entries:
                entries.append(line)
            else:
                entries[-1] += " " + line.strip()
        counts: dict[str, int] = {}
        for entry in entries:
            i = entry.find(marker)
            if i < 0:
                continue
            msg = entry[i + len(marker):]
            if msg.startswith("statement: "):
                sql = msg[len("statement: "):]
            elif msg.startswith("execute "):
                sql = msg.split(": ", 1)[1] if ": " in msg else ""
            else:
                continue
            kind = statement_kind(sql)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def transactions(self) -> int:
        """Committed + rolled-back transactions in this database so far (pg_stat_database).
        A fresh connection each time, so the statistics snapshot is current."""

        async def q() -> int:
            import asyncpg

            conn = await asyncpg.connect(self.admin_dsn)
            try:
                await conn.execute("SELECT pg_stat_clear_snapshot()")
                v = await conn.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", self.name
                )
                return int(v or 0)
            finally:
                await conn.close()

        return asyncio.run(q())


_LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+\"?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


def statement_kind(sql: str) -> str:
    words = sql.strip().split(None, 1)
    if not words:
        return "other"
    verb = words[0].upper().rstrip(";")
    if verb in {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START", "END"}:
        return "txn"
    m = _TABLE.search(sql)
    return f"{verb} {m.group(1)}" if m else verb


# --- load generator ------------------------------------------------------------------------
def run_loadgen(spec: dict[str, Any], work_dir: Path, tag: str) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / f"loadgen-{tag}.spec.json"
    out_path = work_dir / f"loadgen-{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    limit = float(spec.get("hard_limit_s", 120)) + 30
    subprocess.run([PY, "-m", "benchmarks.loadgen", str(spec_path), str(out_path)], cwd=str(ROOT), check=True,
                   timeout=limit)
    return json.loads(out_path.read_text())


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
