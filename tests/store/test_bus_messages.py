"""The change bus's message types (no Redis, no SQL): every kind says whether it invalidates
a compiled org, the wire form round-trips, and the in-process bus hands listeners the typed
object itself."""
from __future__ import annotations

import msgspec
import pytest

from store.bus import ChangeBus
from store.bus_messages import (
    KINDS,
    ApiKeyRevoked,
    CapabilityTokenRevoked,
    Change,
    ManifestChanged,
    OverrideConsumed,
    PolicyChanged,
    decode,
    encode,
)

SAMPLES: list[Change] = [
    ManifestChanged(org_id="o", version=2, uapk_id="bot", manifest_id="m", status="suspended"),
    PolicyChanged(org_id="o", version=3),
    ApiKeyRevoked(org_id="o", version=4, key_id="k", key_hash="h"),
    CapabilityTokenRevoked(org_id="o", jti="t", exp=1.5),
    OverrideConsumed(org_id="o", jti="t", exp=2.0),
]


def test_every_kind_decides_whether_it_invalidates_a_compiled_org() -> None:
    assert {type(m) for m in SAMPLES} == set(KINDS)
    assert {k.__name__: k.invalidates_org for k in KINDS} == {
        "ManifestChanged": True, "PolicyChanged": True,
        "ApiKeyRevoked": False, "CapabilityTokenRevoked": False, "OverrideConsumed": False,
    }


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_wire_round_trip(message: Change) -> None:
    envelope = decode(encode("proc-1", message))
    assert envelope.origin == "proc-1" and envelope.change == message and type(envelope.change) is type(message)


def test_the_wire_keeps_the_kind_names_operators_know() -> None:
    raw = msgspec.json.decode(encode("p", CapabilityTokenRevoked(org_id="o", jti="t", exp=1.0)))
    assert raw == {"origin": "p", "change": {"kind": "capability_token_revoked", "org_id": "o", "jti": "t", "exp": 1.0}}


@pytest.mark.parametrize("raw", [
    b"", b"null", b"{}", b'{"origin": "p"}',
    b'{"origin": "p", "change": {"kind": "approval_decided", "org_id": "o"}}',
    b'{"origin": "p", "change": {"kind": "manifest", "org_id": "o", "version": "3", "uapk_id": "b", '
    b'"manifest_id": "m", "status": "active"}}',
    b'{"kind": "policy", "org_id": "o", "version": 1}',
])
def test_anything_else_fails_to_decode(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode(raw)


def test_messages_are_immutable() -> None:
    with pytest.raises(AttributeError):
        SAMPLES[1].version = 9  # type: ignore[misc]


async def test_in_process_bus_delivers_the_typed_object_to_every_listener() -> None:
    bus = ChangeBus()
    got: list[tuple[str, Change]] = []

    async def broken(message: Change) -> None:
        raise RuntimeError("a faulty listener")

    async def one(message: Change) -> None:
        got.append(("one", message))

    async def two(message: Change) -> None:
        got.append(("two", message))

    for listener in (one, broken, two):
        bus.subscribe(listener)
    message = SAMPLES[0]
    await bus.publish(message)
    assert [name for name, _ in got] == ["one", "two"]  # the faulty one broke nothing
    assert all(m is message for _, m in got)
