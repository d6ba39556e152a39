"""Guard the WebUI's generation and options routes for the safe denoiser, as one ASGI middleware.

- Bad arguments: the WebUI hands ``alwayson_scripts`` args to scripts unchecked and only logs what
  a script raises, so a typo in a field would otherwise give an image without the correction the
  caller asked for. POST /sdapi/v1/txt2img and /img2img are read, the entry for this extension
  checked, and a bad one answered 422 ``{"detail": "safe denoiser: ..."}`` naming the field.
- Locked settings: a generation's ``override_settings`` or a POST /sdapi/v1/options that changes a
  setting the operator locked (or one of the extension's own) is answered 403.
- Refused jobs: a job the extension refused (a missing bank, enforcement that cannot be met, an
  error while steering) comes back from the WebUI as a success without images; its answer is
  turned into an HTTP error with the reason as JSON ``detail``: 422 when the request asked for the
  safe denoiser, 503 when the operator's policy applied it to a request that did not.
Good requests are replayed to the app unchanged. It needs no WebUI import, so it is tested with a
real FastAPI app.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lib_safe_denoiser.generation.args import ArgsError
from lib_safe_denoiser.generation.infotext import KEY_ERROR
from lib_safe_denoiser.generation.script_args import ScriptArgs
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy, PolicyError, locked_settings_problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
OPTIONS_PATH = "/sdapi/v1/options"
SCRIPT_KEY = "safe denoiser"
MAX_BODY = 256 * 1024 * 1024
"""img2img bodies carry base64 images; beyond this the request is passed on unchecked."""


def _entry(payload: Any) -> Any:
    scripts = payload.get("alwayson_scripts") if isinstance(payload, dict) else None
    if not isinstance(scripts, dict):
        return None
    return next((v for k, v in scripts.items() if isinstance(k, str) and k.strip().lower() == SCRIPT_KEY), None)


def request_problem(payload: Any) -> str | None:
    """The message for a bad safe-denoiser entry in a generation request, or None if it is fine."""
    entry = _entry(payload)  # no entry, or no object at all: not ours to judge
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return "safe denoiser: the alwayson_scripts entry must be an object like {\"args\": [...]}"
    if "args" not in entry:
        return None
    try:
        ScriptArgs.check_api_args(entry["args"])
    except ArgsError as e:
        return f"safe denoiser: {e}"
    return None


def asks_for_steering(payload: Any) -> bool:
    """Whether a (valid) generation request enables the safe denoiser itself."""
    entry = _entry(payload)
    try:
        return ScriptArgs.check_api_args(entry["args"]).enabled
    except (ArgsError, KeyError, TypeError):
        return False


def settings_problem(path: str, payload: Any, policy: OperatorPolicy, operator: bool = False) -> str | None:
    """The message refusing a request that changes locked settings, or None (``operator``: the caller is one)."""
    if path == OPTIONS_PATH:
        keys = payload if isinstance(payload, dict) else {}
    else:
        keys = payload.get("override_settings") if isinstance(payload, dict) else None
    return locked_settings_problem(keys, policy, operator=operator) if isinstance(keys, dict) and keys else None


def refusal(body: bytes, encoding: str = "") -> str | None:
    """The reason the extension refused a generation, read from the WebUI's answer, or None.

    ``encoding``: the answer's Content-Encoding (the WebUI gzips answers for clients that accept it).
    """
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        info = json.loads(json.loads(body)["info"])
        reason = info["extra_generation_params"][KEY_ERROR]
    except (ValueError, KeyError, TypeError, OSError, EOFError):
        return None
    return str(reason)


class ArgsValidationMiddleware:
    """``policy`` reads the operator's policy now (it can change at any time); ``operator`` says whether
    the request's caller is an operator (run inside the request, after the caller is known)."""

    def __init__(self, app: ASGIApp, policy: Callable[[], OperatorPolicy] = OperatorPolicy,
                 operator: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.policy = policy
        self.operator = operator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope.get("type") != "http" or scope.get("method") != "POST" or (
                path not in GENERATION_PATHS and path != OPTIONS_PATH):
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
        try:
            payload = json.loads(body) if len(body) <= MAX_BODY else None
        except (ValueError, UnicodeDecodeError):
            payload = None  # malformed JSON: the WebUI answers it
        status, problem = 422, request_problem(payload) if path != OPTIONS_PATH else None
        if problem is None:
            try:
                status, problem = 403, settings_problem(path, payload, self.policy(), self.operator())
            except PolicyError as e:
                status, problem = 503, f"safe denoiser: {e}"
        if problem is not None:
            await _reject(send, problem, status)
            return
        if path == OPTIONS_PATH:
            await self.app(scope, _replay(messages, receive), send)
            return
        status = 422 if asks_for_steering(payload) else 503
        await self.app(scope, _replay(messages, receive), _refusing(send, status))


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _refusing(send: Send, status: int) -> Send:
    """``send`` that holds a generation's answer back and, if the extension refused the job, answers
    ``status`` with the reason instead."""
    start: Message | None = None
    body = bytearray()

    async def refusing(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        headers = {k.lower(): v for k, v in start.get("headers", ())}
        encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        reason = refusal(bytes(body), encoding) if start.get("status") == 200 else None
        if reason is not None:
            await _reject(send, f"safe denoiser: {reason}", status)
            return
        await send(start)
        await send({"type": "http.response.body", "body": bytes(body)})

    return refusing


async def _reject(send: Send, detail: str, status: int = 422) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
