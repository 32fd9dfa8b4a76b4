"""What the change bus carries: one msgspec Struct per kind of change, a tagged union.

Every message names its organization. ``invalidates_org`` says whether the change can alter
that organization's compiled policy (``policies.compile.CompiledOrg``): the gateway reloads
the org from SQL only for those. The others are for the listener that owns their kind:

* ``manifest`` ``ManifestChanged``: invalidates (gateway state; the revoked-token set too)
* ``policy`` ``PolicyChanged``: invalidates (gateway state)
* ``api_key_revoked`` ``ApiKeyRevoked``: no (the API key cache)
* ``capability_token_revoked`` ``CapabilityTokenRevoked``: no (the revoked-token set)
* ``override_consumed`` ``OverrideConsumed``: no (the spent-override set)

``version`` is the org's ``org_state.version`` after the change, for the changes that bump it
(a listener that already holds that version skips the message).

On Redis the wire form is an ``Envelope``: the change plus the publishing bus's id, so that a
process drops the copy of its own messages that pub/sub hands back (it delivered them locally
at once). Anything else on the channel (unknown kind, missing field, not JSON) fails
``decode`` and is dropped by the listener.
"""
from __future__ import annotations

from typing import ClassVar, get_args

import msgspec


class Change(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    # Every kind sets it (no default: a new kind must decide; tests/store/test_bus_messages.py
    # checks each member of AnyChange).
    invalidates_org: ClassVar[bool]

    org_id: str


class ManifestChanged(Change, frozen=True, kw_only=True, tag="manifest"):
    """A manifest was registered or changed status (approve, reject, suspend, reactivate,
    revoke, superseded). Suspend and revoke also revoke the manifest's capability tokens in the
    same transaction (no message per token)."""

    invalidates_org: ClassVar[bool] = True

    version: int
    uapk_id: str
    manifest_id: str
    status: str


class PolicyChanged(Change, frozen=True, kw_only=True, tag="policy"):
    """The org's live or shadow policy rules changed (add, delete, replace, rollback, shadow
    deploy / promote / drop)."""

    invalidates_org: ClassVar[bool] = True

    version: int


class ApiKeyRevoked(Change, frozen=True, kw_only=True, tag="api_key_revoked"):
    """An API key was revoked: every process drops it from its key cache (``key_hash`` is the
    peppered hash, never the key)."""

    invalidates_org: ClassVar[bool] = False

    version: int
    key_id: str
    key_hash: str


class CapabilityTokenRevoked(Change, frozen=True, kw_only=True, tag="capability_token_revoked"):
    """One capability token was revoked; remembered until ``exp`` (epoch seconds)."""

    invalidates_org: ClassVar[bool] = False

    jti: str
    exp: float


class OverrideConsumed(Change, frozen=True, kw_only=True, tag="override_consumed"):
    """An override token was spent; remembered until ``exp`` (epoch seconds)."""

    invalidates_org: ClassVar[bool] = False

    jti: str
    exp: float


AnyChange = ManifestChanged | PolicyChanged | ApiKeyRevoked | CapabilityTokenRevoked | OverrideConsumed
KINDS: tuple[type[Change], ...] = get_args(AnyChange)


class Envelope(msgspec.Struct, frozen=True):
    origin: str  # the publishing bus's id
    change: AnyChange


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(origin: str, change: Change) -> bytes:
    return _encoder.encode(Envelope(origin, change))  # type: ignore[arg-type]


def decode(raw: bytes | str) -> Envelope:
    """Raises ``msgspec.DecodeError`` (a ``ValidationError`` among them) for anything that is not
    a well-formed message of a known kind."""
    return _decoder.decode(raw)
