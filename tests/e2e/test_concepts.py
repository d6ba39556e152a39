"""Text concepts through a live WebUI's REST API, with a bank in the same request.

The CLIP judge has random weights (nothing can be downloaded here): the plumbing is what is checked
— the settings reach the judge, the WebUI's own VAE decodes with gradient, every judged step is
counted in the infotext. The test sets the extension's CLIP settings through /sdapi/v1/options,
which only operators may do (on a WebUI without logins everyone is one), and restores them after.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.e2e.conftest import CREDENTIALS, URL
from tests.e2e.test_webui_api import BASE, same

CLIP_SETTINGS = {"safe_denoiser_clip_model": "ViT-B-32", "safe_denoiser_clip_pretrained": ""}
"""A random-weight ViT-B/32 (open_clip's architecture; "" = no weights): no download needed."""
OPERATOR = (os.environ.get("SD_WEBUI_OPERATOR", ""), os.environ.get("SD_WEBUI_OPERATOR_PASSWORD", ""))


@pytest.fixture(scope="module")
def operator():
    auth = OPERATOR if all(OPERATOR) else CREDENTIALS
    with httpx.Client(base_url=URL, timeout=900, auth=auth) as client:
        before = client.get("/sdapi/v1/options").json()
        r = client.post("/sdapi/v1/options", json=CLIP_SETTINGS)
        if r.status_code == 403:
            pytest.skip("these credentials are no operator's: set SD_WEBUI_OPERATOR / SD_WEBUI_OPERATOR_PASSWORD")
        assert r.status_code == 200, r.text
        yield client
        client.post("/sdapi/v1/options", json={k: before.get(k) for k in CLIP_SETTINGS if k in before})


def generate(client: httpx.Client, fields: dict | None) -> tuple[list[str], dict]:
    body = {**BASE, "steps": 4}
    if fields is not None:
        body["alwayson_scripts"] = {"safe denoiser": {"args": [fields]}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()["images"], json.loads(r.json()["info"])["extra_generation_params"]


def test_a_bank_and_concepts_together_in_one_request(operator, banks):
    concepts = {"concepts": "nudity, blood", "concept_eta": -1.0, "concept_gamma": 200.0,
                "concept_window_start": 0.0, "concept_window_end": 1.0}
    bank = {"enabled": True, "bank": banks["bank"], "preset": "custom", "mode": "constant", "strength": 0.5,
            "window_start": 0.0, "window_end": 0.5}
    plain, _ = generate(operator, None)
    images, params = generate(operator, {**bank, **concepts})
    assert "Safe denoiser error" not in params, params
    assert params["Safe denoiser"] == banks["bank"] and params["Safe denoiser concepts"] == "nudity, blood"
    assert params["Safe denoiser concepts model"].startswith("ViT-B-32")
    triggered = params["Safe denoiser concepts triggered"].split(",")
    assert len(triggered) == 4 and all(n == "2" for n in triggered), "eta -1: both images at every step"
    assert len(images) == 2 and not same(images, plain)

    alone, alone_params = generate(operator, {"enabled": True, **concepts})
    assert "Safe denoiser" not in alone_params and alone_params["Safe denoiser concepts triggered"]
    assert len(alone) == 2


def test_concepts_that_never_trigger_change_nothing(operator):
    plain, _ = generate(operator, None)
    images, params = generate(operator, {"enabled": True, "concepts": "a cat", "concept_eta": 0.999})
    assert params["Safe denoiser concepts triggered"] == "0,0,0,0"
    assert same(images, plain), "untriggered images are the unsteered ones, bit for bit"
