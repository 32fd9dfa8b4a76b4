"""Every JSON request body is read here: Content-Type checked, duplicate keys refused, and
decoder failures in Bastion's own words (``core.wire``), whether a handler takes a typed
``data:`` parameter (Litestar calls ``Request.json``) or reads the body itself."""
from __future__ import annotations

from typing import Any, TypeVar, overload

from litestar import Request
from litestar.types import Empty

from core import wire
from core.errors import FieldIssue, UnsupportedMediaType, ValidationFailed

T = TypeVar("T")


def _check_media_type(request: Request[Any, Any, Any]) -> None:
    """A body must say it is JSON: ``application/json`` or any ``application/*+json``. A form
    or XML body is refused with 415 rather than guessed at (a proxy or a browser form that
    sends another type is not talking to this API)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType()


class BastionRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        if self._json is Empty:
            body = await self.body()
            if body.strip():
                _check_media_type(self)
                doc = wire.loads(body)
                _check_typed_body(self, doc)
                self._json = doc
            else:
                _check_empty_body(self)
                self._json = None
        return self._json


def _data_field(request: Request[Any, Any, Any]) -> Any:
    handler = request.scope.get("route_handler")
    return handler.parsed_fn_signature.parameters.get("data") if handler is not None else None


def _check_empty_body(request: Request[Any, Any, Any]) -> None:
    """An empty body where the handler's ``data:`` is required gets the same answer as
    :func:`read_json` (Litestar would report the bare parameter name ``'data'``); a handler
    whose ``data`` admits None (an optional body) takes the empty body as None."""
    field = _data_field(request)
    if field is not None and not field.is_optional:
        raise ValidationFailed("Request body is required.", [FieldIssue("body", "A JSON object is required.")])


def _check_typed_body(request: Request[Any, Any, Any], doc: Any) -> None:
    """A typed ``data:`` body is converted strictly first, in Bastion's wording: Litestar's
    own conversion is lenient (``"60"`` would pass as the integer 60), so the server would
    accept bodies its OpenAPI document rules out."""
    field = _data_field(request)
    if field is not None:
        wire.convert(doc, field.annotation)


@overload
async def read_json(request: Request[Any, Any, Any], type_: type[T], *, required: bool = True) -> T: ...
@overload
async def read_json(request: Request[Any, Any, Any], type_: None = None, *, required: bool = True) -> Any: ...
async def read_json(request: Request[Any, Any, Any], type_: Any = None, *, required: bool = True) -> Any:
    """The body as ``type_`` (or any JSON document). An empty body is refused when ``required``;
    otherwise it gives ``type_()`` (all defaults) or ``None``."""
    body = await request.body()
    if not body.strip():
        if required:
            raise ValidationFailed("Request body is required.", [FieldIssue("body", "A JSON object is required.")])
        return type_() if type_ is not None else None
    _check_media_type(request)
    doc = wire.loads(body)
    return doc if type_ is None else wire.convert(doc, type_)
