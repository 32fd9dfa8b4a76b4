"""Schemathesis against our own OpenAPI document (/schema/openapi.json), every operation,
over real HTTP to a real server: zero 5xx, every response conforms to the document (status
code, content type, headers, body schema), and the server refuses what the document rules
out (``negative_data_rejection``: a negative example, such as a body with an unknown field,
a wrong type or a missing required field, must get a 4xx). Every write operation documents
a request body, and the run sends bodies to each of them.

Positive and negative examples; the org id path parameter is pinned to the caller's org half
of the time (so requests get past the org guard into validation and storage) and left to
the generator otherwise. ``max_examples`` is small in ``make test`` and larger under
BASTION_SOAK=1.
"""
from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.core import NotSet
from schemathesis.generation import GenerationMode

from tests.faults.helpers import setup_agent
from tests.faults.procs import BastionServer, sized

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
    st_checks.negative_data_rejection,
]
WRITE_METHODS = {"POST", "PUT", "PATCH"}


def _operations(server: BastionServer) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/schema/openapi.json")
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def test_every_operation_against_its_schema(module_server: BastionServer) -> None:
    server = module_server
    agent = setup_agent(server, "fuzz-bot")
    import httpx

    from tests.faults.procs import BOOT_EMAIL, BOOT_PASSWORD

    r = httpx.post(f"{server.base_url}/api/v1/auth/login", json={"email": BOOT_EMAIL, "password": BOOT_PASSWORD})
    session = {"Authorization": f"Bearer {r.json()['access_token']}"}
    ops = _operations(server)
    assert len(ops) >= 25, [op.label for op in ops]
    writes = [op for op in ops if op.method.upper() in WRITE_METHODS]
    assert len(writes) >= 27, [op.label for op in writes]
    without_body = [op.label for op in writes if not list(op.body)]
    assert without_body == [], without_body
    failures: list[str] = []
    bodies_sent: dict[str, int] = {op.label: 0 for op in writes}
    examples = sized(12, 150)

    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception as exc:  # an operation we cannot generate for is a finding too
                failures.append(f"{op.label} [{mode.value}]: cannot generate: {exc!r}")
                continue
            # Gateway endpoints are for agents; everything else is called as the owner.
            key = agent["agent_key"] if "/gateway/" in op.path or op.path.startswith("/api/v1/approvals") else server.owner_key

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            @given(case=strategy, pin=st.booleans(), as_user=st.booleans())
            def run(case: Any, pin: bool, as_user: bool) -> None:
                if pin and case.path_parameters and "org_id" in case.path_parameters:
                    case.path_parameters["org_id"] = server.org_id
                # The management API also takes the owner's session (some operations only it).
                creds = session if as_user and key == server.owner_key else {"X-API-Key": key}
                if op.label in bodies_sent and not isinstance(case.body, NotSet):
                    bodies_sent[op.label] += 1
                response = case.call(base_url=server.base_url, headers=creds, timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as exc:
                    failures.append(f"{op.label} [{mode.value}] -> {response.status_code}: {str(exc)[:600]}")
                    raise

            try:
                run()
            except (Exception, BaseExceptionGroup):
                pass  # recorded above (one minimal example per operation and mode)
    assert not failures, "\n\n".join(failures[:20])
    # Request bodies were really exercised: every write operation got generated bodies.
    assert [label for label, n in bodies_sent.items() if n == 0] == [], bodies_sent
