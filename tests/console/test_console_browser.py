"""The console in a real browser against a real server: sign in, an agent escalates, the inbox
shows it live, approve on the page, the agent's retry is allowed; deny; a viewer sees no
buttons; a forged POST without the CSRF token is refused."""
from __future__ import annotations

from typing import Any

from tests.console.conftest import AGENT, PASSWORD, Console, escalate, screenshot_dir, sign_in

LIVE_TIMEOUT_MS = 10_000  # the stream polls every 2 s


def _agent_poll(console: Console, approval_id: str) -> dict[str, Any]:
    with console.agent() as agent:
        r = agent.get(f"/api/v1/approvals/{approval_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _api_view(console: Console, approval_id: str) -> dict[str, Any]:
    """The approval as the management API shows it (who decided, notes, reason)."""
    with console.server.client(console.server.owner_key) as owner:
        r = owner.get(f"/api/v1/orgs/{console.org_id}/approvals/{approval_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_sign_in_live_inbox_approve_and_the_agents_retry_is_allowed(browser: Any, console: Console) -> None:
    page = sign_in(browser, console, console.approver)
    response = page.reload()
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    cookie = next(c for c in page.context.cookies() if c["name"] == "bastion_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    page.wait_for_selector("#live-status.on", timeout=LIVE_TIMEOUT_MS)

    # Text an agent controls, with markup and a right-to-left override in it.
    approval_id = escalate(console, params={"charge": "ch_1", "note": "<script>alert(1)</script> pay\u202eevil"},
                           description="Refund <b>order</b> 1234",
                           counterparty={"name": "Globex <GmbH>", "email": "ap@globex.example"})
    row = page.wait_for_selector(f"tr[data-approval-id='{approval_id}']", timeout=LIVE_TIMEOUT_MS)  # no reload
    assert "stripe:refund" in row.inner_text() and "42.5 EUR" in row.inner_text() and "Globex <GmbH>" in row.inner_text()
    if (shots := screenshot_dir()) is not None:
        page.screenshot(path=str(shots / "console-inbox.png"), full_page=True)

    # A second tab stays on the inbox while the first one decides.
    inbox = page.context.new_page()
    inbox.goto(page.url)
    inbox.wait_for_selector("#live-status.on", timeout=LIVE_TIMEOUT_MS)
    page.click(f"tr[data-approval-id='{approval_id}'] a")
    page.wait_for_selector("#approve")
    assert page.inner_text("#status") == "PENDING"
    params = page.inner_text("#params")
    assert "<script>alert(1)</script>" in params and "U+202E" in params  # shown as text, the override as a badge
    assert page.inner_text("#description") == "Refund <b>order</b> 1234"
    assert '"name": "Globex <GmbH>"' in page.inner_text("#counterparty")
    assert page.locator("#hidden-warning").count() == 1
    assert page.evaluate("() => window.alerted === undefined && document.scripts.length") == 1  # console.js only
    if shots is not None:
        page.screenshot(path=str(shots / "console-approval.png"), full_page=True)

    # Two lines: the browser sends CRLF, stored as typed (LF), not refused as a lone CR.
    page.fill("form.approve textarea[name=notes]", "Customer verified by phone.\nTicket 77.")
    page.click("#approve")
    page.wait_for_selector("#decided")
    assert page.inner_text("#status") == "APPROVED"
    assert console.approver in page.inner_text("#decided")
    assert page.locator("#approve").count() == 0

    seen = _api_view(console, approval_id)
    assert seen["status"] == "APPROVED" and seen["decided_by"] == console.approver
    assert seen["notes"] == "Customer verified by phone.\nTicket 77."
    polled = _agent_poll(console, approval_id)
    assert polled["status"] == "APPROVED"
    with console.agent() as agent:
        body = {"uapk_id": AGENT, "agent_id": "agent-1", "override_token": polled["override_token"],
                "counterparty": {"name": "Globex <GmbH>", "email": "ap@globex.example"},
                "action": {"type": "refund", "tool": "stripe", "amount": 42.5, "currency": "EUR",
                           "params": {"charge": "ch_1", "note": "<script>alert(1)</script> pay\u202eevil"},
                           "description": "Refund <b>order</b> 1234"}}
        r = agent.post("/api/v1/gateway/execute", json=body)
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text

    # The decided approval left the other tab's inbox, live again (no reload).
    inbox.wait_for_selector(f"tr[data-approval-id='{approval_id}']", state="detached", timeout=LIVE_TIMEOUT_MS)
    page.context.close()


def test_deny_with_a_reason(browser: Any, console: Console) -> None:
    approval_id = escalate(console, amount=99.0)
    page = sign_in(browser, console, console.approver)
    other = escalate(console, amount=98.0)
    page.goto(f"{console.url}/console/orgs/{console.org_id}/approvals/{approval_id}")
    assert page.inner_text("#manifest").startswith("Pay-Bot · version 1.0.0 · active")
    assert page.locator(f"#others a[href$='/{other}']").count() == 1  # the agent's other pending approval
    # A reason the text rule refuses: the page again, saying why (400), nothing decided.
    page.fill("form.deny textarea[name=reason]", "Not our \u202ecustomer.")
    with page.expect_response(lambda resp: resp.url.endswith("/deny")) as info:
        page.click("#deny")
    assert info.value.status == 400 and "reason" in page.inner_text("#decision-error")
    assert page.inner_text("#status") == "PENDING"
    page.fill("form.deny textarea[name=reason]", "Not our customer.")
    page.click("#deny")
    page.wait_for_selector("#decided")
    assert page.inner_text("#status") == "DENIED"
    seen = _api_view(console, approval_id)
    assert seen["status"] == "DENIED" and seen["reason"] == "Not our customer." and seen["decided_by"] == console.approver
    assert _agent_poll(console, approval_id).get("override_token") is None
    page.context.close()


def test_a_viewer_sees_no_decision_buttons_and_cannot_decide(browser: Any, console: Console) -> None:
    approval_id = escalate(console, amount=7.0)
    page = sign_in(browser, console, console.viewer)
    page.goto(f"{console.url}/console/orgs/{console.org_id}/approvals/{approval_id}")
    assert page.inner_text("#status") == "PENDING"
    assert page.locator("#approve").count() == 0 and page.locator("#deny").count() == 0
    assert "viewer" in page.inner_text("#read-only")
    # Even with the session's own CSRF token, the role decides: 403, still pending.
    csrf = page.context.cookies() and page.evaluate("() => document.querySelector('input[name=csrf_token]').value")
    r = page.request.post(f"{console.url}/console/orgs/{console.org_id}/approvals/{approval_id}/approve",
                          form={"csrf_token": csrf}, max_redirects=0)
    assert r.status == 403
    assert _agent_poll(console, approval_id)["status"] == "PENDING"
    page.context.close()


def test_a_forged_post_without_the_csrf_token_is_refused(browser: Any, console: Console) -> None:
    approval_id = escalate(console, amount=8.0)
    page = sign_in(browser, console, console.approver)
    url = f"{console.url}/console/orgs/{console.org_id}/approvals/{approval_id}"
    # The signed-in browser's cookie goes along (what a forged form would rely on); no token.
    for form in ({"notes": "forged"}, {"notes": "forged", "csrf_token": "not-the-token"}):
        r = page.request.post(f"{url}/approve", form=form, max_redirects=0)
        assert r.status == 403, r.text()
        assert r.json()["code"] == "PERMISSION_DENIED"
    r = page.request.post(f"{url}/deny", form={}, max_redirects=0)
    assert r.status == 403
    assert _agent_poll(console, approval_id)["status"] == "PENDING"
    page.context.close()


def test_sign_out_ends_the_session_even_for_a_copied_cookie(browser: Any, console: Console) -> None:
    page = sign_in(browser, console, console.approver)
    copied = next(c for c in page.context.cookies() if c["name"] == "bastion_console")
    page.click("text=Sign out")
    page.wait_for_url(f"{console.url}/console/login")
    context = browser.new_context()
    context.add_cookies([copied])
    other = context.new_page()
    other.goto(f"{console.url}/console/orgs/{console.org_id}/approvals")
    assert other.url.startswith(f"{console.url}/console/login?next=")  # redirected: the session is over
    context.close()
    page.context.close()


def test_a_wrong_password_is_refused_on_the_page(browser: Any, console: Console) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{console.url}/console/login")
    page.fill("input[name=email]", console.approver)
    page.fill("input[name=password]", "wrong-password")
    with page.expect_response(lambda r: r.url.endswith("/console/login") and r.request.method == "POST") as info:
        page.click("button[type=submit]")
    assert info.value.status == 401
    assert "Invalid email or password." in page.inner_text(".error")
    assert not [c for c in context.cookies() if c["name"] == "bastion_console"]
    context.close()


def test_the_inbox_filters_by_agent_and_capability(browser: Any, console: Console) -> None:
    approval_id = escalate(console, amount=3.0)
    page = sign_in(browser, console, console.viewer)
    inbox = f"{console.url}/console/orgs/{console.org_id}/approvals"
    row = f"tr[data-approval-id='{approval_id}']"
    page.select_option("select[name=capability]", "stripe:refund")
    page.click("text=Filter")
    page.wait_for_url(f"{inbox}?agent=&capability=stripe%3Arefund&age=")
    assert page.locator(row).count() == 1
    for query in ("?capability=email:send", "?agent=other-bot", f"?agent={AGENT}&capability=email:send"):
        page.goto(inbox + query)
        assert page.locator(row).count() == 0, query
        assert "0 pending" in page.inner_text("#pending-count")
    page.goto(f"{inbox}?agent={AGENT}&age=")
    assert page.locator(row).count() == 1
    page.goto(f"{inbox}?age=5m")  # waiting for 5 minutes or more: not this one, asked a moment ago
    assert page.locator(row).count() == 0
    assert page.goto(f"{inbox}?age=forever").status == 400  # an unknown age is refused, not ignored
    page.context.close()


def test_the_four_eyes_rule_is_explained_on_the_page(browser: Any, console: Console) -> None:
    """An admin who created the agent's key may not approve its request: the service refuses,
    the page says why (403) and the approval stays pending for another approver."""
    from tests.console.conftest import join

    join(console.server, "admin@acme.com", "admin")
    with console.server.client() as anon:
        token = anon.post("/api/v1/auth/login", json={"email": "admin@acme.com", "password": PASSWORD}).json()["access_token"]
        r = anon.post(f"/api/v1/orgs/{console.org_id}/api-keys", headers={"Authorization": f"Bearer {token}"},
                      json={"name": "admins-bot-key", "role": "agent", "uapk_ids": [AGENT]})
        assert r.status_code == 201, r.text
    approval_id = escalate(console, key=r.json()["key"], amount=11.0)
    page = sign_in(browser, console, "admin@acme.com")
    page.goto(f"{console.url}/console/orgs/{console.org_id}/approvals/{approval_id}")
    with page.expect_response(lambda resp: resp.url.endswith("/approve")) as info:
        page.click("#approve")
    assert info.value.status == 403
    assert "Four-eyes rule" in page.inner_text("#decision-error")
    assert page.inner_text("#status") == "PENDING"
    assert _api_view(console, approval_id)["status"] == "PENDING"
    page.context.close()


def test_a_deep_link_leads_back_after_sign_in_and_errors_are_pages(browser: Any, console: Console) -> None:
    approval_id = escalate(console, amount=12.0)
    target = f"{console.url}/console/orgs/{console.org_id}/approvals/{approval_id}"
    context = browser.new_context()
    page = context.new_page()
    page.goto(target)  # not signed in: the sign-in page, which leads back here
    assert page.url.startswith(f"{console.url}/console/login?next=")
    page.fill("input[name=email]", console.approver)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(target)
    assert page.inner_text("#status") == "PENDING"
    # A link to something that is not there: the API's error, as a page with the same CSP.
    response = page.goto(f"{console.url}/console/orgs/{console.org_id}/approvals/no-such-approval")
    assert response.status == 404 and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert page.inner_text("#error-code") == "NOT_FOUND"
    context.close()


def test_the_cookie_is_secure_over_tls(console: Console) -> None:
    """Behind a TLS-terminating proxy (a trusted one, sending X-Forwarded-Proto: https) the
    session and sign-in cookies are Secure; over plain HTTP they cannot be (the browser would
    drop them), which the first test shows."""
    import httpx

    with httpx.Client(base_url=console.url, headers={"X-Forwarded-Proto": "https"}) as tls:
        r = tls.get("/console/login")
        assert "secure" in r.headers["set-cookie"].lower().split("; ")
        token = r.cookies["bastion_console_login"]
        tls.cookies.clear()  # (httpx would not send a Secure cookie to an http:// URL: sent by hand)
        r = tls.post("/console/login", data={"csrf_token": token, "email": console.approver, "password": PASSWORD},
                     headers={"Cookie": f"bastion_console_login={token}"})
        assert r.status_code == 303
        session = next(c for c in r.headers.get_list("set-cookie") if c.startswith("bastion_console="))
        flags = [part.strip().lower() for part in session.split(";")]
        assert {"httponly", "secure", "samesite=strict", "path=/console"} <= set(flags)
