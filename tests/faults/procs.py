"""Real processes for the fault suite: a private Redis, a private ``bastion serve``, and a TCP
proxy that can cut a connection to a backing service on demand.

Every helper is a context manager (or is closed by a fixture) and always cleans up: no
process outlives its test. Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.timing import SOAK

ROOT = Path(__file__).resolve().parents[2]
# The ``bastion`` console script of the environment running the tests (the wheel's venv under
# ``make test``), never a path inside a source tree.
BASTION = Path(sys.executable).parent / "bastion"


def sized(short: Any, soak: Any) -> Any:
    """The make-test value, or the long one under BASTION_SOAK=1 (sizes, never skips)."""
    return soak if SOAK else short


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --- Redis --------------------------------------------------------------------------------
class RedisServer:
    """``redis-server`` on a spare port, no persistence. ``kill``/``freeze``/``thaw``/``start``
    drive the faults; the port stays the same across restarts. ``users``: ACL rules given on
    the command line (``["name on >password ~* &* +@all"]``), so they survive a restart too."""

    def __init__(self, workdir: Path, port: int | None = None, users: tuple[str, ...] = ()):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = users
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
            + [arg for rule in self.users for arg in ["--user", *rule.split()]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except Exception as exc:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}") from exc
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=2, socket_connect_timeout=2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: the port closes, every counter is gone (no persistence)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (the worst case for timeouts)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- a TCP proxy that can cut a service off -------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. ``cut()`` closes every connection and refuses
    new ones (a dead database); ``restore()`` accepts again."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        srv.settimeout(0.1)
        self._listener = srv
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        self._thread.start()

    def _accept(self, srv: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        socks = [a, b]
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self._listen()

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def proxied(url: str, port: int) -> str:
    """``url`` (a database on 127.0.0.1:5432) through a TcpProxy listening on ``port``."""
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


# --- Bastion ------------------------------------------------------------------------------
BOOT_EMAIL = "owner@acme.com"
BOOT_PASSWORD = "owner-pass-123"


class BastionServer:
    """``bastion serve`` as a subprocess with BASTION_* env; stdout (the JSON log) goes to a
    file. With ``bootstrap=True`` the first start creates org ``acme`` and its owner key
    (BASTION_BOOTSTRAP_*), read back from the log into ``org_id``/``owner_key``."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str,
        redis_url: str | None,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        bootstrap: bool = True,
        only: str = "all",
        name: str = "bastion",
    ):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.name = name
        self.only = only
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.org_id = ""
        self.owner_key = ""
        self.starts = 0
        data_dir = data_dir or workdir / "data"
        base = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
        base.update(
            BASTION_HOST="127.0.0.1",
            BASTION_PORT=str(self.port),
            BASTION_DATA_DIR=str(data_dir),
            BASTION_DATABASE_URL=database_url,
            BASTION_LOG_LEVEL="INFO",
            BASTION_RATE_LIMITS_ENABLED="false",
        )
        if redis_url:
            base["BASTION_REDIS_URL"] = redis_url
        if bootstrap:
            base.update(
                BASTION_BOOTSTRAP_ORG_SLUG="acme",
                BASTION_BOOTSTRAP_ORG_NAME="Acme",
                BASTION_BOOTSTRAP_ADMIN_EMAIL=BOOT_EMAIL,
                BASTION_BOOTSTRAP_ADMIN_PASSWORD=BOOT_PASSWORD,
            )
        base.update(env or {})
        self.env = base

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90) -> BastionServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [str(BASTION), "serve"] + (["--only", self.only] if self.only != "all" else [])
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start: {self.log_text()[-4000:]}")
            time.sleep(0.05)
        for line in self.log_text()[offset:].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            boot = rec.get("bootstrap") if isinstance(rec, dict) else None
            if isinstance(boot, dict):
                self.org_id = boot["org_id"]
                self.owner_key = boot.get("api_key") or self.owner_key
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, timeout=20)

    def restart(self) -> BastionServer:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def client(self, key: str | None = None, timeout: float = 30, **kw: Any) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, **kw)

    def aclient(self, key: str | None = None, timeout: float = 30, **kw: Any) -> httpx.AsyncClient:
        headers = {"X-API-Key": key} if key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, **kw)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> BastionServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def inherit(server: BastionServer, workdir: Path, name: str, **env: str) -> BastionServer:
    """A second server process sharing the first one's database, Redis and data dir (keys,
    pepper): a replica."""
    other = BastionServer(
        workdir,
        database_url=server.env["BASTION_DATABASE_URL"],
        redis_url=server.env.get("BASTION_REDIS_URL"),
        data_dir=Path(server.env["BASTION_DATA_DIR"]),
        bootstrap=False,
        name=name,
        env=env,
    )
    other.org_id, other.owner_key = server.org_id, server.owner_key
    return other


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a log (other lines skipped: the log-injection test checks those)."""
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec
