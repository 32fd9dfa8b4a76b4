"""core/url_template.py: placeholders only in the path and query, values encoded as one component."""
from __future__ import annotations

import pytest

from core.url_template import TemplateError, placeholders, render, template_issue


def test_good_templates() -> None:
    t = "https://api.example.com/v1/customers/{customer_id}/notes?kind={kind}"
    assert template_issue(t) is None
    assert placeholders(t) == ["customer_id", "kind"]
    assert template_issue("http://127.0.0.1:8080/x") is None


@pytest.mark.parametrize("template", [
    "ftp://api.example.com/x", "file:///etc/passwd", "javascript:alert(1)", "api.example.com/x", "",
    "https://{host}/x", "https://api.example.com:{port}/x", "https://user:pw@api.example.com/x",
    "https://api.example.com/x#frag", "https://api.example.com/{bad-name}", "https://api.example.com/{1x}",
    "https://api.example.com/{unclosed", "https://api.example.com/x}", "https://api.example.com/a b",
    "https://api.example.com:99999/x", "https://api.example.com/\u00e9", "https:///x",
    "https://api.example.com/" + "a" * 2100,
])
def test_bad_templates(template: str) -> None:
    assert template_issue(template) is not None


def test_render_encodes_each_value_as_one_component() -> None:
    t = "https://api.example.com/c/{id}?q={q}"
    assert render(t, {"id": "../../admin", "q": "a&b=c#d"}) == "https://api.example.com/c/..%2F..%2Fadmin?q=a%26b%3Dc%23d"
    assert render(t, {"id": 42, "q": True}) == "https://api.example.com/c/42?q=true"
    with pytest.raises(TemplateError):
        render(t, {"id": 1})
    with pytest.raises(TemplateError):
        render(t, {"id": {"a": 1}, "q": "x"})
