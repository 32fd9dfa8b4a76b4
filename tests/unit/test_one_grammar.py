"""Written once: the UAPK-id grammar (core/ids.py) and the text rule (core/text.py).

The id grammar was written five times and the "control character" rule six ways, and they
disagreed (issue 12). These tests keep one of each: every request type and validator uses the
same objects, and no other module of the installed packages spells the grammar out again."""
from __future__ import annotations

import importlib
from pathlib import Path

import msgspec

from core.ids import UAPK_ID, UAPK_ID_GRAMMAR, UAPK_ID_PATTERN, UapkId, is_uapk_id

PACKAGES = ("core", "httpkit", "policies", "audit", "store", "gateway", "services", "api", "bastion")


def _sources() -> list[Path]:
    out: list[Path] = []
    for name in PACKAGES:
        module = importlib.import_module(name)
        out.extend(Path(p) for p in module.__path__ for p in Path(p).rglob("*.py"))
    return out


def test_the_grammar() -> None:
    for good in ("ab", "refund-bot", "a" * 63, "0-9"):
        assert is_uapk_id(good), good
    for bad in ("a", "a" * 64, "-ab", "Ab", "refund_bot", "refund-bot\n", "réfund", "ab\u200b", "", None, 12):
        assert not is_uapk_id(bad), bad
    assert msgspec.json.decode(b'"refund-bot"', type=UapkId) == "refund-bot"


def test_every_user_of_the_grammar_shares_it() -> None:
    from api import validation
    from api.manifest_wire import ManifestAgent
    from gateway.schemas import GatewayActionRequest
    from policies import manifest, rules

    assert validation.UAPK_ID is UAPK_ID and manifest.AGENT_ID is UAPK_ID and rules.UAPK_ID is UAPK_ID
    for struct, field in ((GatewayActionRequest, "uapk_id"), (ManifestAgent, "id")):
        schema = msgspec.json.schema(struct)
        props = schema["$defs"][struct.__name__]["properties"] if "$defs" in schema else schema["properties"]
        assert props[field]["pattern"] == UAPK_ID_PATTERN, struct


def test_no_module_spells_the_grammar_out_again() -> None:
    found = [str(p) for p in _sources() if UAPK_ID_GRAMMAR in p.read_text() and p.name != "ids.py"]
    assert found == []


def test_no_module_keeps_its_own_control_character_list() -> None:
    """The manifest's and the approvals' hand-written character checks are gone: core/text.py
    decides what text people read may hold."""
    from policies import manifest
    from services import approvals, manifests

    for module in (manifest, manifests, approvals):
        source = Path(module.__file__ or "").read_text()
        assert "ord(c)" not in source and "\\u202e" not in source.lower(), module.__name__
