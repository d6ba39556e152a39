"""``bank sample``: a reference bank of the model's samples, made over real HTTP (uvicorn) from a FastAPI
app holding the real bank routes behind --api-auth and a route shaped like the WebUI's txt2img
(``webui_server``)."""

from __future__ import annotations

import socket

import pytest

from lib_safe_denoiser.banks.model_samples import GENERIC_PROMPTS, MODEL_SAMPLES_TAG, SampleRequest
from lib_safe_denoiser.banks.webui_http import TXT2IMG_PATH, generated_images
from lib_safe_denoiser.cli import main
from lib_safe_denoiser.errors import BankError
from tests.banks.webui_server import WebUI


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


@pytest.mark.parametrize("answer", [{"images": ["a"]}, {"detail": "no images"}, ["a", "b"]])
def test_an_answer_short_of_images_is_named(answer):
    with pytest.raises(BankError, match="/sdapi/v1/txt2img answered without the 2 images asked for"):
        generated_images(lambda _path, _body: answer, TXT2IMG_PATH, {"batch_size": 2})


def test_a_generation_gives_the_images_asked_for():
    assert generated_images(lambda _path, _body: {"images": ["a", "b", "c"]}, TXT2IMG_PATH,
                            {"batch_size": 2}) == ["a", "b"]
