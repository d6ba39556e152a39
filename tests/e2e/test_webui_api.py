"""The extension in a live WebUI, through its REST API (see conftest.py for the set-up)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

BASE = {"prompt": "a red apple", "negative_prompt": "", "steps": 6, "width": 64, "height": 64, "seed": 1234,
        "batch_size": 2, "cfg_scale": 7.0}


def steer(banks, **fields):
    return {"enabled": True, "bank": banks["bank"], "preset": "custom", "mode": "paper", "strength": 0.9,
            "gate": False, "window_start": 0.0, "window_end": 1.0, **fields}


def txt2img(webui, args=None, route="/sdapi/v1/txt2img", **extra):
    body = {**BASE, **extra}
    if args is not None:
        body["alwayson_scripts"] = {"Safe Denoiser": {"args": args}}
    r = webui.post(route, json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return data["images"], json.loads(data["info"])


def pixels(images):
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB"), dtype=np.int16) for i in images]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DDIM", "UniPC"])
def test_enabled_changes_images_disabled_matches_plain(webui, banks, sampler):
    """Plumbing on every sampler family. The constant mode moves every step by a fixed share of the
    distance to the bank, so its change is visible whatever the random-weight model predicts (the
    paper mode's kernel, at these 8x8 latents, can act on every step and still move no pixel on the
    samplers it does not carry)."""
    plain, _ = txt2img(webui, sampler_name=sampler)
    disabled, info_off = txt2img(webui, [False, banks["bank"]], sampler_name=sampler)
    steered, info = txt2img(webui, [steer(banks, mode="constant", strength=0.5)], sampler_name=sampler)
    after, _ = txt2img(webui, sampler_name=sampler)
    assert len(steered) == 2
    assert same(plain, disabled), "a disabled extension must not change a single pixel"
    assert not same(plain, steered), "the correction must change the images"
    assert same(plain, after), "nothing may leak into the next job"
    params = info["extra_generation_params"]
    assert params["Safe denoiser"] == banks["bank"] and params["Safe denoiser mode"] == "constant"
    assert len(params["Safe denoiser hash"]) == 10 and params["Safe denoiser acted"] == "6/6"
    assert "Safe denoiser" not in info_off["extra_generation_params"]
    assert "Safe denoiser: e2e-unsafe" in info["infotexts"][0]


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M", "DPM++ SDE", "DDIM", "PLMS", "UniPC", "LMS"])
def test_the_paper_mode_carries_its_re_noising_on_the_carried_samplers(webui, banks, sampler):
    """Where the paper mode carries its correction, an open gate re-noises the state as the official loop
    does, so the image changes even where the kernel does not reach this random-weight model's bank; the
    fresh noise comes from the seed, so the same job gives the same image. LMS is not carried."""
    plain, _ = txt2img(webui, sampler_name=sampler)
    steered, info = txt2img(webui, [steer(banks)], sampler_name=sampler)
    again, _ = txt2img(webui, [steer(banks)], sampler_name=sampler)
    assert same(steered, again), "the re-noising is seeded"
    assert info["extra_generation_params"]["Safe denoiser acted"] == "6/6"
    assert same(plain, steered) == (sampler == "LMS")


def test_odds_mode_and_positional_args(webui, banks):
    plain, _ = txt2img(webui)
    positional = [True, banks["bank"], "custom", "odds", 1.0, 0.0, 1.0, banks["reference"], 0.1]
    by_position, info = txt2img(webui, positional)
    by_name, _ = txt2img(webui, [steer(banks, mode="odds", strength=1.0, reference_bank=banks["reference"])])
    assert info["extra_generation_params"]["Safe denoiser mode"] == "odds"
    assert info["extra_generation_params"]["Safe denoiser floor"] == "0"
    assert same(by_position, by_name) and not same(plain, by_position)


def test_the_bandwidth_floor_is_a_field_by_name_and_appended_position(webui, banks):
    """The floor (``smoothing``) comes after the concept fields positionally, so older positional calls keep
    their meaning; it changes the odds mode's correction and infotext records it."""
    odds = {"mode": "odds", "strength": 1.0, "reference_bank": banks["reference"]}
    no_floor, _ = txt2img(webui, [steer(banks, **odds)])
    by_name, info = txt2img(webui, [steer(banks, **odds, smoothing=1.0)])
    positional = [True, banks["bank"], "custom", "odds", 1.0, 0.0, 1.0, banks["reference"], 0.1, 3.15, True, 1.6,
                  "", 0.0, 0.0, 0.0, 1.0, 1.0]
    by_position, _ = txt2img(webui, positional)
    assert info["extra_generation_params"]["Safe denoiser floor"] == "1"
    assert same(by_position, by_name) and not same(no_floor, by_name)


def test_hires_fix_is_steered(webui, banks):
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.6,
             "hr_second_pass_steps": 3}
    plain, _ = txt2img(webui, **hires)
    steered, info = txt2img(webui, [steer(banks)], **hires)
    assert pixels(steered)[0].shape == (128, 128, 3)
    assert not same(plain, steered)
    acted, total = map(int, info["extra_generation_params"]["Safe denoiser acted"].split("/"))
    assert total == 6 + 3  # both passes were steered


def test_batch_count_every_batch_steered(webui, banks):
    plain, _ = txt2img(webui, n_iter=2)
    steered, info = txt2img(webui, [steer(banks)], n_iter=2)
    assert len(steered) == 4  # 2 batches of 2 (the API returns no grid)
    assert all(not same([a], [b]) for a, b in zip(plain, steered, strict=True))
    assert len(info["infotexts"]) == 4
    assert all("Safe denoiser acted: 6/6" in text for text in info["infotexts"])


def test_img2img_inpainting(webui, banks):
    init = base64.b64encode(_png(np.full((64, 64, 3), 128, np.uint8))).decode()
    mask_px = np.zeros((64, 64), np.uint8)
    mask_px[:, 32:] = 255
    mask = base64.b64encode(_png(mask_px)).decode()
    body = {"init_images": [init], "mask": mask, "denoising_strength": 0.8, "inpainting_fill": 1}
    plain, _ = txt2img(webui, route="/sdapi/v1/img2img", **body)
    steered, info = txt2img(webui, [steer(banks)], route="/sdapi/v1/img2img", **body)
    assert not same(plain, steered) and "Safe denoiser acted" in info["extra_generation_params"]


def test_infotext_field_reproduces_a_steered_image(webui, banks):
    steered, info = txt2img(webui, [steer(banks, strength=0.7)], batch_size=1)
    again, info2 = txt2img(webui, infotext=info["infotexts"][0], batch_size=1)
    assert info2["extra_generation_params"]["Safe denoiser strength"] == "0.7"
    assert same(steered, again)


@pytest.mark.parametrize("args, field", [
    ([{"enabled": True, "bank": "e2e-unsafe", "strenght": 1}], "strenght"),
    ([{"strength": "high"}], "strength"),
    ([True, "e2e-unsafe", "custom", "nonsense"], "mode"),
    ([True, "../etc"], "bank"),
])
def test_bad_args_are_rejected_naming_the_field(webui, args, field):
    r = webui.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"safe denoiser": {"args": args}}})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("safe denoiser: ") and field in r.json()["detail"]


def test_missing_bank_fails_closed(webui, banks):
    r = webui.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {
        "safe denoiser": {"args": [{"enabled": True, "bank": "no-such-bank"}]}}})
    assert r.status_code == 422 and "images" not in r.json(), "refused: an HTTP error, no images"
    assert r.json()["detail"].startswith("safe denoiser: no bank named 'no-such-bank'")
    plain, _ = txt2img(webui)
    assert len(plain) == 2  # the next job is unaffected


def test_script_info_lists_labelled_args(webui):
    info = [s for s in webui.get("/sdapi/v1/script-info").json() if s["name"] == "safe denoiser"]
    assert info and [a["label"] for a in info[0]["args"]][:4] == ["Safe Denoiser", "Negation banks", "Preset", "Mode"]


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
