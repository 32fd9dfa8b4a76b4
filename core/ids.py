"""The grammar of a UAPK id (an agent's id in its manifest), written once.

A UAPK id is 2 to 63 characters: lowercase ASCII letters, digits and hyphens, starting with a
letter or digit. The manifest, the gateway's request, policy subjects (``agent:<uapk_id>``),
API-key restrictions and the management API's look-ups all use this one grammar, so an id
accepted in one place is never refused (or silently different) in another.

Anchored with ``\\A...\\Z``, never ``^...$``: ``$`` also matches before a trailing newline, so
``"refund-bot\\n"`` would pass. Nothing here imports from the rest of Bastion.
"""
from __future__ import annotations

import re
from typing import Annotated

import msgspec

# The character grammar, for messages and documentation.
UAPK_ID_GRAMMAR = "[a-z0-9][a-z0-9-]{1,62}"
UAPK_ID_PATTERN = rf"\A{UAPK_ID_GRAMMAR}\Z"
UAPK_ID = re.compile(UAPK_ID_PATTERN, re.ASCII)

# For msgspec types (request bodies): the same pattern, and the length bounds that let a
# too-long or empty id be named as such before the pattern is tried.
UapkId = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=UAPK_ID_PATTERN)]


def is_uapk_id(value: object) -> bool:
    return isinstance(value, str) and UAPK_ID.match(value) is not None
