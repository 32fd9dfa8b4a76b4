"""Request bodies in the OpenAPI document: every write operation documents its body, and every
request schema is the JSON Schema of the type the server decodes (unknown fields refused, so
``additionalProperties: false``).

Two kinds of handlers take a body:

* a typed Litestar ``data:`` parameter (decoded through ``httpkit.request.BastionRequest``);
* a handler that reads the body itself, after authentication and the role check (the gateway
  reads it only once the API key is known; manifest register takes a free-form document that
  ``policies.manifest`` validates field by field). Such a handler declares its body with
  ``opt=request_body(Type, ...)`` and reads it with :func:`declared_body`, so the documented
  type and the decoded type are one and the same.

Why regenerate the schemas of typed bodies too: Litestar's generator drops
``forbid_unknown_fields`` (the document would invite fields the server refuses) and has no
way to say a body may be omitted. msgspec's own generator describes exactly what
``msgspec.convert`` accepts. Patterns are written for Python (``\\A...\\Z``); the document
gives them in the ECMA-262 dialect that JSON Schema specifies (``^...$``, the same meaning:
without the multiline flag ``$`` matches only at the very end).

The document is completed once, on the first request for it (``complete_document``), not at
start-up: most processes never serve it.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi.spec import OpenAPIMediaType, RequestBody
from litestar.routes import HTTPRoute

from httpkit.request import read_json

WRITE_METHODS = ("POST", "PUT", "PATCH")
_REF = "#/components/schemas/"


class NoBody(msgspec.Struct, forbid_unknown_fields=True):
    """No fields: send nothing, or ``{}``."""


@dataclass(frozen=True)
class BodySpec:
    schema: Any  # the type whose JSON Schema documents the body
    required: bool = True
    decode: bool = True  # read_json into ``schema``; False: any JSON value, the handler validates it
    description: str | None = None


def request_body(schema: Any, *, required: bool = True, decode: bool = True,
                 description: str | None = None) -> dict[str, Any]:
    """``opt`` for a route handler that reads its own body (see the module docstring)."""
    return {"request_body": BodySpec(schema, required, decode, description)}


NO_BODY = request_body(NoBody, required=False, description="No fields: send no body, or `{}`.")


async def declared_body(request: Request[Any, Any, Any]) -> Any:
    """The body as the route declared it (``request_body``): decoded into the declared type
    (unknown fields refused), or any JSON value when ``decode=False``."""
    spec: BodySpec = request.route_handler.opt["request_body"]
    return await read_json(request, spec.schema if spec.decode else None, required=spec.required)


def _non_optional(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None``/absence was allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            # A Union built at run time from a list: `X | Y` has no spelling for that.
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007
    return annotation, False


def body_spec(handler: Any) -> BodySpec | None:
    """What ``handler`` takes as its body: declared, or its typed ``data`` parameter."""
    spec = handler.opt.get("request_body")
    if isinstance(spec, BodySpec):
        return spec
    field = handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return None
    schema, optional = _non_optional(field.annotation)
    return BodySpec(schema, required=not (optional or field.has_default))


def operations(app: Litestar) -> Iterator[tuple[str, str, Any]]:
    """(path as in the document, METHOD, handler) of every documented operation."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in route.route_handler_map.items():
            if method != "OPTIONS" and handler.resolve_include_in_schema():
                yield route.path_format or "/", method, handler


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            out.add(ref[len(_REF):])
        for value in node.values():
            _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def _reachable(roots: Any, components: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo: set[str] = set()
    _refs(roots, todo)
    while todo:
        name = todo.pop()
        if name in seen or name not in components:
            continue
        seen.add(name)
        _refs(components[name], todo)
    return seen


def _ecma_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _ecma_patterns(v) for k, v in node.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str):
            if pattern.startswith("\\A"):
                pattern = "^" + pattern[2:]
            if pattern.endswith("\\Z"):
                pattern = pattern[:-2] + "$"
            out["pattern"] = pattern
        return out
    if isinstance(node, list):
        return [_ecma_patterns(v) for v in node]
    return node


def complete_document(app: Litestar) -> None:
    """Give every operation that takes a body its request body, from msgspec's JSON Schema of
    the body's type; drop the component schemas nothing refers to any more. Idempotent."""
    if getattr(app.state, "openapi_completed", False):
        return
    openapi = app.openapi_schema
    specs: list[tuple[Any, BodySpec]] = []
    for path, method, handler in operations(app):
        spec = body_spec(handler)
        item = (openapi.paths or {}).get(path)
        operation = getattr(item, method.lower(), None) if item is not None else None
        if spec is None or operation is None:
            continue
        operation.request_body = None  # replaced below
        specs.append((operation, spec))
    types_ = list(dict.fromkeys(spec.schema for _, spec in specs))
    refs, generated = msgspec.json.schema_components(types_, ref_template=_REF + "{name}")
    by_type = dict(zip(types_, refs))

    document = openapi.to_schema()
    existing: dict[str, Any] = document.get("components", {}).get("schemas", {})
    # What the rest of the document (responses, parameters) still refers to.
    kept = _reachable({k: v for k, v in document.items() if k != "components"}, existing)
    clash = sorted(set(generated) & kept)
    if clash:
        raise RuntimeError(f"OpenAPI: request and response schemas share the names {clash}; rename one of the types.")
    for operation, spec in specs:
        operation.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=_ecma_patterns(by_type[spec.schema]))},  # type: ignore[arg-type]
            required=spec.required,
            description=spec.description,
        )
    schemas = {name: existing[name] for name in sorted(kept)}
    schemas.update({name: _ecma_patterns(schema) for name, schema in sorted(generated.items())})
    assert openapi.components is not None
    openapi.components.schemas = schemas  # type: ignore[assignment]
    app.state.openapi_completed = True


async def complete_before_serving(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of the docs router: the document is completed before it is served."""
    complete_document(request.app)
