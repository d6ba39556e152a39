"""``bank sample``: a reference bank of the model's samples, made over real HTTP (uvicorn) from a FastAPI
app holding the real bank routes behind --api-auth and a route shaped like the WebUI's txt2img."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image

from lib_safe_denoiser.banks.model_samples import GENERIC_PROMPTS, MODEL_SAMPLES_TAG, SampleRequest
from lib_safe_denoiser.banks.routes import BankApi, RouteSettings, build_router
from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.cli import main
from lib_safe_denoiser.errors import BankError

TXT2IMG_FIELDS = {"prompt", "negative_prompt", "width", "height", "steps", "sampler_name", "cfg_scale", "batch_size",
                  "n_iter", "seed", "send_images", "save_images"}


def picture(seed: int, width: int, height: int) -> str:
    """A base64 PNG, as the WebUI's API sends images: different for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class WebUI:
    """The app, served on a free local port; ``fail_at`` makes that txt2img call (1-based) answer 500."""

    def __init__(self, root) -> None:
        self.store = BankStore(root)
        self.requests: list[dict] = []
        self.fail_at = 0
        app = FastAPI()

        @app.post("/sdapi/v1/txt2img")
        def txt2img(body: dict) -> dict:
            self.requests.append(body)
            assert set(body) == TXT2IMG_FIELDS
            if len(self.requests) == self.fail_at:
                raise HTTPException(500, "CUDA out of memory")
            return {"images": [picture(body["seed"] + i, body["width"], body["height"])
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

    @staticmethod
    def _no_encode(*_args, **_kwargs) -> dict:
        raise AssertionError("making a reference bank encodes nothing")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def webui(tmp_path):
    server = WebUI(tmp_path / "data")
    yield server
    server.stop()


def sample(webui: WebUI, *extra: str) -> int:
    return main(["bank", "sample", "refs", "--url", webui.url, "--width", "16", "--height", "16", *extra])


def test_makes_a_tagged_private_bank_batch_by_batch(webui, capsys):
    assert sample(webui, "--login", "alice:pw", "--count", "10", "--batch-size", "4", "--steps", "3",
                  "--seed", "7") == 0
    info = webui.store.get("refs")
    assert info.n_images == 10 and info.tags == (MODEL_SAMPLES_TAG,) and info.owner == "alice"
    assert [r["batch_size"] for r in webui.requests] == [4, 4, 2]
    assert [r["seed"] for r in webui.requests] == [7, 11, 15], "fixed seeds: the same request makes the same bank"
    assert [r["prompt"] for r in webui.requests] == list(GENERIC_PROMPTS[:3])
    assert {(r["width"], r["height"], r["steps"], r["save_images"]) for r in webui.requests} == {(16, 16, 3, False)}
    assert "refs: 10 samples stored" in capsys.readouterr().out


def test_prompts_are_taken_in_turn(webui):
    assert sample(webui, "--login", "bob:pw", "--count", "6", "--batch-size", "2", "--prompt", "a cat",
                  "--prompt", "a dog") == 0
    assert [r["prompt"] for r in webui.requests] == ["a cat", "a dog", "a cat"]


def test_a_failure_half_way_keeps_what_was_stored_and_says_so(webui, capsys):
    webui.fail_at = 2
    assert sample(webui, "--login", "alice:pw", "--count", "8", "--batch-size", "4") == 2
    err = capsys.readouterr().err
    assert "/sdapi/v1/txt2img answered HTTP 500: CUDA out of memory" in err
    assert "the bank 'refs' keeps the 4 samples stored so far" in err
    assert webui.store.get("refs").n_images == 4


def test_a_wrong_login_creates_nothing(webui, capsys):
    assert sample(webui, "--login", "alice:nope", "--count", "2") == 2
    err = capsys.readouterr().err
    assert "answered HTTP 401" in err and "no bank was created" in err
    assert webui.store.list() == []


def test_an_existing_name_is_refused_before_anything_is_lost(webui, capsys):
    assert sample(webui, "--login", "alice:pw", "--count", "2") == 0
    assert sample(webui, "--login", "alice:pw", "--count", "2") == 2
    assert "answered HTTP 409" in capsys.readouterr().err
    assert webui.store.get("refs").n_images == 2


def test_an_unreachable_webui_is_named(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["bank", "sample", "refs", "--url", f"http://127.0.0.1:{port}", "--count", "1"]) == 2
    assert f"cannot reach the WebUI at http://127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("changes, message", [
    ({"count": 0}, "count must be a whole number >= 1"),
    ({"batch_size": True}, "batch_size must be a whole number >= 1"),
    ({"prompts": ()}, "prompts must be a non-empty list"),
    ({"cfg_scale": float("nan")}, "cfg_scale must be a number"),
])
def test_bad_requests_are_named(changes, message):
    with pytest.raises(BankError, match=message):
        SampleRequest(**changes)
