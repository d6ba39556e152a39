"""The WebUI's REST API over plain HTTP, for commands that make banks through a running WebUI.

Making a bank with the model (``bank sample``, ``bank vary``) needs the WebUI's own generation routes,
so it runs as an HTTP client of them, with the caller's ``--api-auth`` login: the bank it makes is the
caller's like any other, and it works from anywhere that can reach the WebUI.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from lib_safe_denoiser.errors import BankError

BANKS_PATH = "/safe-denoiser/v1/banks"
TXT2IMG_PATH = "/sdapi/v1/txt2img"
IMG2IMG_PATH = "/sdapi/v1/img2img"

Post = Callable[[str, dict], dict]
"""(path, JSON body) -> the JSON answer; raises ``BankError`` naming the route and the server's detail."""


def bank_path(name: str) -> str:
    """The route of the bank ``name`` (bank names may hold spaces)."""
    return f"{BANKS_PATH}/{quote(name, safe='')}"


class WebUIHttp:
    """JSON POSTs and GETs to the WebUI at ``base_url``; ``login`` is ``user:password`` for ``--api-auth``.
    Every failure is a ``BankError`` naming the route and the server's detail, or the unreachable URL."""

    def __init__(self, base_url: str, login: str | None = None, timeout: float = 3600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if login:
            self.headers["Authorization"] = "Basic " + base64.b64encode(login.encode("utf-8")).decode("ascii")

    def post(self, path: str, body: dict) -> dict:
        return json.loads(self._open(path, json.dumps(body).encode("utf-8"), "POST") or b"{}")

    def get(self, path: str) -> bytes:
        return self._open(path, None, "GET")

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path) or b"{}")

    def _open(self, path: str, data: bytes | None, method: str) -> bytes:
        req = urllib.request.Request(self.base_url + path, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as exc:
            raise BankError(f"{path} answered HTTP {exc.code}: {_detail(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BankError(f"cannot reach the WebUI at {self.base_url}: {getattr(exc, 'reason', exc)}") from None


def generated_images(post: Post, path: str, body: dict) -> list[str]:
    """The base64 images of one generation (``path`` txt2img or img2img): exactly the ``batch_size`` asked for,
    or a ``BankError`` where the WebUI answered fewer."""
    answer = post(path, body)
    images = answer.get("images") if isinstance(answer, dict) else None
    wanted = body["batch_size"]
    if not isinstance(images, list) or len(images) < wanted:
        raise BankError(f"{path} answered without the {wanted} images asked for")
    return images[:wanted]


def _detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:300] or "(no detail)"
    detail = data.get("detail", data) if isinstance(data, dict) else data
    return detail if isinstance(detail, str) else json.dumps(detail)[:300]


class BankWriter:
    """Stores batches of base64 images as the new bank ``bank``: the first batch creates it (so an existing
    name is refused before anything is made twice), the next ones are added. ``failed`` turns an error
    half-way into one that says what was kept, so a long run that fails loses nothing it made."""

    def __init__(self, post: Post, bank: str, description: str, tags: list[str], shared: bool) -> None:
        self.post, self.bank = post, bank
        self.create = {"name": bank, "description": description, "tags": tags, "shared": shared}
        self.created = False
        self.stored = 0
        self.skipped: list[str] = []

    def add(self, files: list[dict]) -> None:
        """Store ``files`` (``{"name", "data"}``), counting what the bank took and what it skipped."""
        if self.created:
            report = self.post(f"{bank_path(self.bank)}/images", {"images": files})
        else:
            report = self.post(BANKS_PATH, {**self.create, "images": files})
            self.created = True
        added = report.get("report", {}) if isinstance(report, dict) else {}
        self.stored += len(added.get("added", []))
        self.skipped += [f"{s.get('name')}: {s.get('reason')}" for s in added.get("skipped", [])]
        self.skipped += [f"{name}: the same image as one already in the bank" for name in added.get("duplicates", [])]

    def failed(self, exc: BankError, unit: str) -> BankError:
        kept = f"the bank {self.bank!r} keeps the {self.stored} {unit} stored so far" if self.created \
            else "no bank was created"
        return BankError(f"{exc} ({kept})")

    def result(self) -> dict:
        return {"bank": self.bank, "images": self.stored, "skipped": self.skipped}


@dataclass(frozen=True)
class Generation:
    """The generation settings every bank-making request sends the WebUI (txt2img and img2img alike)."""

    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    sampler: str = "Euler a"
    cfg_scale: float = 7.0
    seed: int = 0

    def check(self, whole_numbers: tuple[str, ...] = ()) -> None:
        """Refuse bad numbers before anything is asked of the WebUI: the size, the steps and each of
        ``whole_numbers`` an int >= 1, ``cfg_scale`` a finite number."""
        for name in ("width", "height", "steps", *whole_numbers):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BankError(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.cfg_scale, bool) or not (isinstance(self.cfg_scale, (int, float))
                                                    and math.isfinite(self.cfg_scale)):
            raise BankError(f"cfg_scale must be a number, got {self.cfg_scale!r}")
        if not isinstance(self.negative_prompt, str):
            raise BankError("negative_prompt must be a text")

    def body(self, prompt: str, batch_size: int, seed: int) -> dict:
        """The request fields of one generation of ``batch_size`` images from ``seed``, never saved by the WebUI."""
        return {"prompt": prompt, "negative_prompt": self.negative_prompt, "width": self.width, "height": self.height,
                "steps": self.steps, "sampler_name": self.sampler, "cfg_scale": self.cfg_scale,
                "batch_size": batch_size, "n_iter": 1, "seed": seed, "send_images": True, "save_images": False}
