"""WebUI glue: the extension's REST surface: checks on the WebUI's generation and options routes
(``lib_safe_denoiser/generation/api_validation.py``), and the bank, preset and policy routes under
``/safe-denoiser/v1`` (``lib_safe_denoiser/banks/routes.py``, ``lib_safe_denoiser/policy/routes.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modules import script_callbacks

from lib_safe_denoiser.banks.routes import API_PREFIX, BankApi, RouteSettings, build_router
from lib_safe_denoiser.generation.api_validation import ArgsValidationMiddleware
from lib_safe_denoiser.policy.request_user import RequestUserMiddleware, api_user
from lib_safe_denoiser.policy.routes import add_routes
from lib_safe_denoiser.policy.users import parse_auth
from safe_denoiser_webui import users
from safe_denoiser_webui.encoding import encode_now
from safe_denoiser_webui.options import OPT_DEFAULT_RESIZE, option
from safe_denoiser_webui.services import POLICY_STORE, PRESET_STORE, STORE


def route_settings() -> RouteSettings:
    """The settings the bank routes judge a request by, read afresh for each request."""
    return RouteSettings(
        api_auth=users.api_auth(),
        other_users=users.ui_users_configured(),
        operators=users.operator_names(),
        folder_import=users.folder_import_enabled(),
        limits=users.upload_limits(),
        default_resize=option(OPT_DEFAULT_RESIZE),
    )


def encode(bank: str, width: int, height: int, progress: Callable[[int, int], None]) -> Mapping[str, Any]:
    """Encode with the loaded model's VAE, under the WebUI's queue lock (``encode_now``)."""
    return encode_now(bank, width, height, progress).as_dict()


def bank_api() -> BankApi:
    return BankApi(store=STORE, encode=encode, settings=route_settings)


def on_app_started(demo: Any, app: Any) -> None:
    """Check generation and options requests (bad args 422, locked settings 403, refused jobs as HTTP
    errors), tell a generation which ``--api-auth`` user asked for it (the WebUI sets no user on API
    jobs), and mount our routes; ``demo`` is None with ``--nowebui``, which changes nothing here."""
    if not any(m.cls is ArgsValidationMiddleware for m in app.user_middleware):
        app.middleware_stack = None  # as the WebUI does itself: rebuilt with ours on the next request
        app.add_middleware(ArgsValidationMiddleware, policy=POLICY_STORE.load,
                           operator=lambda: users.current_user(api_user()).operator)
        app.add_middleware(RequestUserMiddleware, credentials=lambda: parse_auth(users.api_auth()))
    if not any(getattr(route, "path", "").startswith(API_PREFIX + "/") for route in app.routes):
        router = build_router(bank_api())
        add_routes(router, PRESET_STORE, POLICY_STORE)
        app.include_router(router)


script_callbacks.on_app_started(on_app_started)
