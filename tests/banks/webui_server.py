"""A WebUI-shaped server for the commands that make banks through the WebUI: the real bank routes behind
``--api-auth`` (alice and bob), and txt2img/img2img routes that check their bodies' fields as the WebUI
takes them and answer real PNGs, served over real HTTP (uvicorn) on a free local port."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image

from lib_safe_denoiser.banks.routes import BankApi, RouteSettings, build_router
from lib_safe_denoiser.banks.store import BankStore

TXT2IMG_FIELDS = {"prompt", "negative_prompt", "width", "height", "steps", "sampler_name", "cfg_scale", "batch_size",
                  "n_iter", "seed", "send_images", "save_images"}
IMG2IMG_FIELDS = TXT2IMG_FIELDS | {"init_images", "denoising_strength", "resize_mode"}


def picture(seed: int, width: int, height: int, base: np.ndarray | None = None) -> str:
    """A base64 PNG, as the WebUI's API sends images: different for every seed; with ``base`` (an init
    image), that image with noise, as img2img keeps its input's look."""
    rng = np.random.default_rng(seed)
    if base is None:
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    else:
        resized = np.asarray(Image.fromarray(base).convert("RGB").resize((width, height)), dtype=np.int16)
        pixels = np.clip(resized + rng.integers(-40, 40, resized.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class WebUI:
    """The app, served on a free local port; ``fail_at`` makes that generation call (1-based) answer 500."""

    def __init__(self, root) -> None:
        self.store = BankStore(root)
        self.requests: list[dict] = []
        self.fail_at = 0
        app = FastAPI()

        @app.post("/sdapi/v1/txt2img")
        def txt2img(body: dict) -> dict:
            self._take(body, TXT2IMG_FIELDS)
            return {"images": [picture(body["seed"] + i, body["width"], body["height"])
                               for i in range(body["batch_size"])], "parameters": body, "info": "{}"}

        @app.post("/sdapi/v1/img2img")
        def img2img(body: dict) -> dict:
            self._take(body, IMG2IMG_FIELDS)
            init = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["init_images"][0]))).convert("RGB"))
            return {"images": [picture(body["seed"] + i, body["width"], body["height"], init)
                               for i in range(body["batch_size"])], "parameters": body, "info": "{}"}

        settings = RouteSettings(api_auth="alice:pw,bob:pw")
        app.include_router(build_router(BankApi(self.store, encode=self._no_encode, settings=lambda: settings)))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)

    def _take(self, body: dict, fields: set[str]) -> None:
        self.requests.append(body)
        assert set(body) == fields
        if len(self.requests) == self.fail_at:
            raise HTTPException(500, "CUDA out of memory")

    @staticmethod
    def _no_encode(*_args, **_kwargs) -> dict:
        raise AssertionError("making a bank through the WebUI encodes nothing")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
