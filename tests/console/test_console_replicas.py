"""The console on PostgreSQL and Redis, with two replicas behind one (imagined) load balancer:
a session signed in on one works on the other (same signing keys), and a sign-out on one ends
it on both (recorded in Redis)."""
from __future__ import annotations

from pathlib import Path

import httpx

from tests.faults.procs import BOOT_EMAIL, BOOT_PASSWORD, BastionServer, inherit


def test_sign_in_on_one_replica_sign_out_ends_it_on_both(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    a = BastionServer(tmp_path / "a", database_url=pg_url, redis_url=redis_url, name="a")
    b = inherit(a, tmp_path / "b", "b")
    try:
        a.start()
        b.start()
        with httpx.Client(base_url=a.base_url) as on_a:
            on_a.get("/console/login")
            r = on_a.post("/console/login", data={"csrf_token": on_a.cookies["bastion_console_login"],
                                                  "email": BOOT_EMAIL, "password": BOOT_PASSWORD})
            assert r.status_code == 303, r.text
            cookie = on_a.cookies["bastion_console"]
            inbox = f"/console/orgs/{a.org_id}/approvals"
            with httpx.Client(base_url=b.base_url, cookies={"bastion_console": cookie}) as on_b:
                r = on_b.get(inbox)
                assert r.status_code == 200 and "Pending approvals" in r.text
                csrf = r.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
                # A form from b's page, posted to a: sign out.
                r = on_a.post("/console/logout", data={"csrf_token": csrf})
                assert r.status_code == 303 and r.headers["location"] == "/console/login"
                on_b.cookies.set("bastion_console", cookie)  # a copy of the old cookie
                r = on_b.get(inbox)
                assert r.status_code in (302, 303) and r.headers["location"].startswith("/console/login?next=")
    finally:
        b.close()
        a.close()
