"""An open inbox (its server-sent event stream) does not hold a server's shutdown: uvicorn
waits for in-flight responses, so the stream must end by itself when the server stops."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.faults.procs import BOOT_EMAIL, BOOT_PASSWORD, BastionServer


def test_sigterm_ends_open_inbox_streams_at_once(tmp_path: Path) -> None:
    server = BastionServer(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}", redis_url=None)
    try:
        server.start()
        browser = httpx.Client(base_url=server.base_url, timeout=30)
        browser.get("/console/login")
        r = browser.post("/console/login", data={"csrf_token": browser.cookies["bastion_console_login"],
                                                 "email": BOOT_EMAIL, "password": BOOT_PASSWORD})
        assert r.status_code == 303 and r.headers["location"] == "/console"
        opened, lines = threading.Event(), []

        def listen() -> None:
            try:
                with browser.stream("GET", f"/console/orgs/{server.org_id}/approvals/stream") as resp:
                    assert resp.headers["content-type"].startswith("text/event-stream")
                    opened.set()
                    lines.extend(resp.iter_lines())
            except httpx.HTTPError:
                pass

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert opened.wait(10)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=10)  # without the fix: held until the stream's 5-minute limit
        assert time.monotonic() - started < 5
        listener.join(5)
        assert "event: ready" in lines
    finally:
        server.close()
