"""Reject generation requests with bad safe-denoiser arguments before they reach the WebUI.

The WebUI hands ``alwayson_scripts`` args to scripts unchecked and only logs what a script
raises, so a typo in a field would otherwise give an image without the correction the caller
asked for. This pure ASGI middleware reads the body of POST /sdapi/v1/txt2img and /img2img,
checks the entry for this extension and answers 422 ``{"detail": "safe denoiser: ..."}`` naming
the bad field; good requests are replayed to the app unchanged. It needs no WebUI import, so it
is tested with a real FastAPI app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lib_safe_denoiser.generation.args import ArgsError, SafeDenoiserArgs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
SCRIPT_KEY = "safe denoiser"
MAX_BODY = 256 * 1024 * 1024
"""img2img bodies carry base64 images; beyond this the request is passed on unchecked."""


def request_problem(payload: Any) -> str | None:
    """The message for a bad safe-denoiser entry in a generation request, or None if it is fine."""
    if not isinstance(payload, dict):
        return None  # not ours to judge: the WebUI's own validation answers
    scripts = payload.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return None
    entries = [v for k, v in scripts.items() if isinstance(k, str) and k.strip().lower() == SCRIPT_KEY]
    if not entries:
        return None
    entry = entries[0]
    if not isinstance(entry, dict):
        return "safe denoiser: the alwayson_scripts entry must be an object like {\"args\": [...]}"
    if "args" not in entry:
        return None
    try:
        SafeDenoiserArgs.check_api_args(entry["args"])
    except ArgsError as e:
        return f"safe denoiser: {e}"
    return None


class ArgsValidationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False) or len(body) > MAX_BODY:
                break
        problem = None
        if len(body) <= MAX_BODY:
            try:
                problem = request_problem(json.loads(body))
            except (ValueError, UnicodeDecodeError):
                problem = None  # malformed JSON: the WebUI answers it
        if problem is not None:
            await _reject(send, problem)
            return
        await self.app(scope, _replay(messages, receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _reject(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
