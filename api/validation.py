"""Small field validators shared by the management API's request types.

Every check collects a FieldIssue (dotted field path + what is wrong) so one response can
name every bad field at once."""
from __future__ import annotations

import re

from core.errors import FieldIssue, ValidationFailed
from core.ids import UAPK_ID
from core.text import is_clean, text_issue

# \A...\Z, not ^...$: "$" also matches before a trailing newline ("acme\n" would pass).
EMAIL = re.compile(r"\A[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,63}\Z", re.ASCII)
# An organization's slug follows the UAPK-id grammar (lowercase letters, digits, hyphens).
SLUG = UAPK_ID


def has_control_chars(value: str) -> bool:
    """Control, bidirectional or invisible characters (the one rule: core/text.py)."""
    return not is_clean(value)


class Checker:
    def __init__(self) -> None:
        self.issues: list[FieldIssue] = []

    def add(self, field: str, issue: str) -> None:
        self.issues.append(FieldIssue(field, issue))

    def text(self, field: str, value: str | None, *, required: bool = True, max_len: int = 200) -> None:
        if value is None:
            if required:
                self.add(field, "Field is required.")
            return
        if required and not value.strip():
            self.add(field, "Must not be empty.")
        elif len(value) > max_len:
            self.add(field, f"Must be at most {max_len} characters.")
        elif (problem := text_issue(value)) is not None:
            self.add(field, problem)

    def pattern(self, field: str, value: str, regex: re.Pattern[str], issue: str) -> None:
        if not regex.match(value):
            self.add(field, issue)

    def check(self) -> None:
        if self.issues:
            raise ValidationFailed("Request body failed validation.", self.issues)
