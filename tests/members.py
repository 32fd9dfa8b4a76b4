"""How a member joins an organization in tests: the way a person does (issue 11, item 13).

``POST /orgs/{org_id}/users`` is an invitation (202); the account is created with the given
password when the email is new; the invitee signs in and accepts. Returns the user id."""
from __future__ import annotations

from typing import Any


async def add_member(client: Any, org: Any, email: str, role: str, password: str = "member-pass-1",
                     headers: dict[str, str] | None = None) -> str:
    r = await client.post(f"/api/v1/orgs/{org.org_id}/users", json={"email": email, "password": password, "role": role},
                          headers=headers or org.headers)
    assert r.status_code == 202, r.text
    invitation_id = r.json()["invitation_id"]
    r = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await client.post(f"/api/v1/invitations/{invitation_id}/accept", headers=auth)
    assert r.status_code == 200 and r.json()["role"] == role, r.text
    import jwt

    return str(jwt.decode(auth["Authorization"][7:], options={"verify_signature": False})["sub"])
