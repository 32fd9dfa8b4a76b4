"""Role checks for the management API, compiled from the Casbin model into a set.

The Casbin files under this folder are the source of truth (authors edit them); at load we
ask pycasbin once for every (role, resource, action) the rules mention and keep the answers
in a frozenset, so a request costs one set lookup instead of an ``enforce`` call.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import casbin

HERE = Path(__file__).parent
ROLES = ("owner", "admin", "approver", "policy_author", "viewer", "agent")


class RoleTable:
    def __init__(self, model_path: Path = HERE / "rbac_model.conf", policy_path: Path = HERE / "rbac_policy.csv"):
        self.enforcer = casbin.Enforcer(str(model_path), str(policy_path))
        pairs = {(p[2], p[3]) for p in self.enforcer.get_policy()}
        allowed = set()
        for role in ROLES:
            for obj, act in pairs:
                if self.enforcer.enforce(role, "any-org", obj, act):
                    allowed.add((role, obj, act))
        self._allowed = frozenset(allowed)

    def allows(self, role: str, resource: str, action: str) -> bool:
        return (role, resource, action) in self._allowed

    def explain(self, role: str, org_id: str, resource: str, action: str) -> tuple[bool, list[str]]:
        ok, rule = self.enforcer.enforce_ex(role, org_id, resource, action)
        return ok, list(rule)


@lru_cache(maxsize=1)
def default_roles() -> RoleTable:
    return RoleTable()
