"""``bank vary``: a bank of img2img variations of a bank's images, made over real HTTP (uvicorn) from a
FastAPI app holding the real bank routes behind --api-auth and a route shaped like the WebUI's img2img
(``webui_server``)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from lib_safe_denoiser.banks.variations import VARIATIONS_TAG, VariationRequest
from lib_safe_denoiser.cli import main
from lib_safe_denoiser.errors import BankError
from tests.banks.store_helpers import make_images
from tests.banks.webui_server import WebUI


@pytest.fixture
def webui(tmp_path):
    server = WebUI(tmp_path / "data")
    server.store.create("sevens", make_images(tmp_path / "src", 3), owner="alice")
    yield server
    server.stop()


def vary(webui: WebUI, *extra: str, login: str = "alice:pw") -> int:
    return main(["bank", "vary", "sevens", "sevens-var", "--url", webui.url, "--login", login, "--width", "16",
                 "--height", "16", *extra])


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((16, 16)), dtype=float)


def test_varies_every_image_into_a_new_tagged_bank(webui, capsys):
    assert vary(webui, "--per-image", "4", "--denoising", "0.3", "--prompt", "a seven", "--seed", "5") == 0
    info = webui.store.get("sevens-var")
    assert info.n_images == 12 and info.tags == (VARIATIONS_TAG,) and info.owner == "alice"
    assert "'sevens'" in info.description and "0.3" in info.description
    assert webui.store.get("sevens").n_images == 3, "the source bank is left as it was"
    assert [r["seed"] for r in webui.requests] == [5, 9, 13], "fixed seeds: the same request makes the same bank"
    assert {(r["batch_size"], r["denoising_strength"], r["prompt"], r["resize_mode"], r["save_images"])
            for r in webui.requests} == {(4, 0.3, "a seven", 1, False)}
    sources = webui.store.image_entries("sevens")
    names = sorted(e["source_name"] for e in webui.store.image_entries("sevens-var"))
    assert names == sorted(f"{e['source_name'].rsplit('.', 1)[0]}-var{k:02d}.png" for e in sources for k in range(4))
    # each request carried its own source image, as stored in the source bank
    sent = [pixels(base64.b64decode(r["init_images"][0])) for r in webui.requests]
    stored = [pixels(webui.store.image_path("sevens", e["sha256"]).read_bytes()) for e in sources]
    assert all(np.abs(a - b).max() == 0 for a, b in zip(sent, stored, strict=True))
    assert "sevens-var: 12 variations stored" in capsys.readouterr().out


def test_a_failure_half_way_keeps_what_was_stored_and_says_so(webui, capsys):
    webui.fail_at = 2
    assert vary(webui, "--per-image", "2") == 2
    err = capsys.readouterr().err
    assert "/sdapi/v1/img2img answered HTTP 500: CUDA out of memory" in err
    assert "the bank 'sevens-var' keeps the 2 variations stored so far" in err
    assert webui.store.get("sevens-var").n_images == 2


def test_another_users_bank_is_not_found_and_nothing_is_made(webui, capsys):
    assert vary(webui, login="bob:pw") == 2
    assert "/safe-denoiser/v1/banks/sevens answered HTTP 404" in capsys.readouterr().err
    assert webui.requests == [] and [b.name for b in webui.store.list()] == ["sevens"]


def test_an_existing_name_is_refused_before_anything_is_lost(webui, capsys):
    assert vary(webui, "--per-image", "1") == 0
    assert main(["bank", "vary", "sevens", "sevens", "--url", webui.url, "--login", "alice:pw"]) == 2
    assert "answered HTTP 409" in capsys.readouterr().err
    assert webui.store.get("sevens").n_images == 3 and webui.store.get("sevens-var").n_images == 3


@pytest.mark.parametrize("changes, message", [
    ({"per_image": 0}, "per_image must be a whole number >= 1"),
    ({"denoising": 0}, r"denoising must be a number in \(0, 1\]"),
    ({"denoising": 1.5}, r"denoising must be a number in \(0, 1\]"),
    ({"cfg_scale": float("inf")}, "cfg_scale must be a number"),
    ({"prompt": None}, "prompt must be a text"),
    ({"negative_prompt": 3}, "negative_prompt must be a text"),
])
def test_bad_requests_are_named(changes, message):
    with pytest.raises(BankError, match=message):
        VariationRequest(**changes)


def test_names_with_spaces_reach_their_banks(webui, capsys):
    webui.store.rename("sevens", "my sevens")
    assert main(["bank", "vary", "my sevens", "my sevens var", "--url", webui.url, "--login", "alice:pw",
                 "--width", "16", "--height", "16", "--per-image", "2"]) == 0, capsys.readouterr().err
    assert webui.store.get("my sevens var").n_images == 6
