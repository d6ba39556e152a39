"""Who sent the REST request a generation runs for.

The WebUI checks ``--api-auth`` on its own routes but sets no user on the processing object of an
API call (``p.user`` is None), so a job cannot tell alice's request from bob's. This pure ASGI
middleware reads the request's Basic credentials, checks them against the same ``--api-auth``
pairs, and leaves the user name in a context variable for the duration of the request: the
generation runs inside that request (in a worker thread that inherits the context), so the
script reads who asked with ``api_user()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar

from lib_safe_denoiser.generation.api_validation import ASGIApp, Receive, Scope, Send
from lib_safe_denoiser.policy.users import authenticate

_API_USER: ContextVar[str | None] = ContextVar("safe_denoiser_api_user", default=None)


def api_user() -> str | None:
    """The authenticated user of the REST request being served, or None (UI job, no auth, bad credentials)."""
    return _API_USER.get()


class RequestUserMiddleware:
    """Sets ``api_user()`` for every HTTP request from its ``Authorization`` header.

    ``credentials`` is called per request (the pairs of ``--api-auth``), so the check always uses
    the current flags; with no pairs nobody is authenticated and ``api_user()`` stays None.
    """

    def __init__(self, app: ASGIApp, credentials: Callable[[], Mapping[str, str]]) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"authorization"),
                      None)
        pairs = self.credentials()
        token = _API_USER.set(authenticate(header, pairs) if pairs else None)
        try:
            await self.app(scope, receive, send)
        finally:
            _API_USER.reset(token)
