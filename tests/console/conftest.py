"""The console's browser tests: a real ``bastion serve`` (the embedded default: SQLite, no
Redis) and Debian's chromium driven headless by Playwright (never a downloaded browser)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.helpers import setup_agent
from tests.faults.procs import BOOT_EMAIL, BOOT_PASSWORD, BastionServer

CHROMIUM = os.environ.get("BASTION_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and nothing that reaches the network on its own (updates, sync, QUIC probes).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "member-pass-1"
AGENT = "pay-bot"


@dataclass
class Console:
    server: BastionServer
    org_id: str
    agent_key: str
    approver: str  # emails; every member's password is PASSWORD
    viewer: str

    @property
    def url(self) -> str:
        return self.server.base_url

    def agent(self) -> httpx.Client:
        return self.server.client(self.agent_key)


def join(server: BastionServer, email: str, role: str) -> None:
    """Invited by the owner's key, signs in over the API and accepts (how a person joins)."""
    with server.client(server.owner_key) as owner, server.client() as anon:
        r = owner.post(f"/api/v1/orgs/{server.org_id}/users", json={"email": email, "password": PASSWORD, "role": role})
        assert r.status_code == 202, r.text
        invitation = r.json()["invitation_id"]
        r = anon.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        r = anon.post(f"/api/v1/invitations/{invitation}/accept",
                      headers={"Authorization": f"Bearer {r.json()['access_token']}"})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    work = tmp_path_factory.mktemp("console")
    # 127.0.0.1 as a trusted proxy: a test sends X-Forwarded-Proto: https as a TLS-terminating proxy would.
    server = BastionServer(work, database_url=f"sqlite+aiosqlite:///{work / 'bastion.db'}", redis_url=None,
                           env={"BASTION_TRUSTED_PROXIES": "127.0.0.1"})
    try:
        server.start()
        ids = setup_agent(server, AGENT, approved=["stripe:refund", "email:send"], human=["stripe:refund"])
        join(server, "approver@acme.com", "approver")
        join(server, "viewer@acme.com", "viewer")
        yield Console(server, server.org_id, ids["agent_key"], "approver@acme.com", "viewer@acme.com")
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def sign_in(browser: Any, console: Console, email: str, password: str = PASSWORD) -> Any:
    """A fresh browser context (its own cookies) signed in as ``email``; returns its page."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(f"{console.url}/console/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/console/orgs/{console.org_id}/approvals")
    return page


OWNER = (BOOT_EMAIL, BOOT_PASSWORD)


def escalate(console: Console, key: str | None = None, counterparty: dict[str, str] | None = None, **action: Any) -> str:
    """The agent (its key, or ``key``) asks for a refund that needs a human; returns the approval id."""
    body = {"uapk_id": AGENT, "agent_id": "agent-1",
            "action": {"type": "refund", "tool": "stripe", "params": {"charge": "ch_1"}, "amount": 42.5,
                       "currency": "EUR", **action}}
    if counterparty is not None:
        body["counterparty"] = counterparty
    with console.server.client(key or console.agent_key) as agent:
        r = agent.post("/api/v1/gateway/execute", json=body)
    assert r.status_code == 200 and r.json()["decision"] == "escalate", r.text
    return str(r.json()["approval_id"])


def screenshot_dir() -> Path | None:
    """Set BASTION_CONSOLE_SCREENSHOTS=<dir> to refresh docs/img/console-*.png from a run."""
    raw = os.environ.get("BASTION_CONSOLE_SCREENSHOTS")
    return Path(raw) if raw else None
