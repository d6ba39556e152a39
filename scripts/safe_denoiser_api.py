"""WebUI glue: the extension's REST surface (argument checks on the WebUI's generation routes)."""

from __future__ import annotations

from typing import Any

from modules import script_callbacks

from lib_safe_denoiser.generation.api_validation import ArgsValidationMiddleware


def on_app_started(demo: Any, app: Any) -> None:
    """Check alwayson_scripts args of generation requests (422 naming the field); ``demo`` is None
    with ``--nowebui``, which changes nothing here."""
    if any(m.cls is ArgsValidationMiddleware for m in app.user_middleware):
        return
    app.middleware_stack = None  # as the WebUI does itself: rebuilt with ours on the next request
    app.add_middleware(ArgsValidationMiddleware)


script_callbacks.on_app_started(on_app_started)
