"""uvicorn factory for a gateway-only process."""
from __future__ import annotations

from litestar import Litestar

from core.settings import load_settings
from gateway.app import create_gateway_app
from httpkit.context import configure_logging


def asgi() -> Litestar:
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_gateway_app(settings)
