"""Presets and the operator's policy on a live WebUI started with ``--gradio-auth``, ``--api-auth`` and
``--safe-denoiser-operators`` (two users, one operator): enforcement steers a plain API call, a
user's preset is invisible to the other user, and a missing enforced bank refuses the job.

Needs SD_WEBUI_AUTH_URL, SD_WEBUI_AUTH_USER/PASSWORD and SD_WEBUI_AUTH_OTHER_USER/PASSWORD (two users)
and SD_WEBUI_OPERATOR / SD_WEBUI_OPERATOR_PASSWORD (an operator of that instance); skipped without them.
Everything the tests change (a shared bank, presets, the policy) is put back afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import AUTH_PASSWORD, AUTH_URL, AUTH_USER

V = "/safe-denoiser/v1"
OTHER_USER = os.environ.get("SD_WEBUI_AUTH_OTHER_USER", "")
OTHER_PASSWORD = os.environ.get("SD_WEBUI_AUTH_OTHER_PASSWORD", "")
OPERATOR = os.environ.get("SD_WEBUI_OPERATOR", "")
OPERATOR_PASSWORD = os.environ.get("SD_WEBUI_OPERATOR_PASSWORD", "")
STEERING = {"mode": "constant", "strength": 1.0, "window_start": 0.0, "window_end": 1.0}
PLAIN = {"prompt": "a house", "steps": 4, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}

pytestmark = pytest.mark.skipif(
    not (AUTH_URL and AUTH_USER and AUTH_PASSWORD and OTHER_USER and OTHER_PASSWORD and OPERATOR
         and OPERATOR_PASSWORD),
    reason="SD_WEBUI_AUTH_URL, two users and SD_WEBUI_OPERATOR(_PASSWORD) name no WebUI with operators",
)


def client(user: str, password: str) -> httpx.Client:
    return httpx.Client(base_url=AUTH_URL, timeout=600, auth=(user, password))


def picture_b64(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def people():
    with client(AUTH_USER, AUTH_PASSWORD) as user, client(OTHER_USER, OTHER_PASSWORD) as other, \
            client(OPERATOR, OPERATOR_PASSWORD) as operator:
        yield user, other, operator


@pytest.fixture(scope="module")
def house(people):
    """A shared bank and a global preset steering with it, made by the operator; the policy restored after."""
    _, _, operator = people
    tag = uuid.uuid4().hex[:8]
    bank, preset = f"e2e-policy-{tag}", f"e2e-house-{tag}"
    before = operator.get(f"{V}/policy").json()
    r = operator.post(f"{V}/banks", json={"name": bank, "shared": True,
                                          "images": [{"name": f"{i}.png", "data": picture_b64(i)} for i in range(3)]})
    assert r.status_code == 201, r.text
    r = operator.post(f"{V}/presets", json={"name": preset, "scope": "global", "banks": [bank], **STEERING})
    assert r.status_code == 201, r.text
    yield bank, preset
    now = operator.get(f"{V}/policy").json()
    restore = {k: before[k] for k in ("enforce", "preset", "floor_banks", "min_strength", "floor_window",
                                      "fail_closed", "hide_accordion", "locked_settings")}
    assert operator.patch(f"{V}/policy", json=restore).status_code == 200, now
    operator.delete(f"{V}/presets/{preset}", params={"scope": "global"})
    operator.delete(f"{V}/banks/{bank}")


def image_and_params(r: httpx.Response) -> tuple[str, dict]:
    assert r.status_code == 200, r.text
    body = r.json()
    return body["images"][0], json.loads(body["info"])["extra_generation_params"]


def test_enforcement_steers_a_plain_api_call(people, house):
    user, _, operator = people
    bank, preset = house
    plain_image, plain_params = image_and_params(user.post("/sdapi/v1/txt2img", json=PLAIN))
    assert "Safe denoiser" not in plain_params
    r = operator.patch(f"{V}/policy", json={"enforce": True, "preset": preset})
    assert r.status_code == 200, r.text
    image, params = image_and_params(user.post("/sdapi/v1/txt2img", json=PLAIN))
    assert image != plain_image, "the same seed, steered"
    assert params["Safe denoiser"] == bank and params["Safe denoiser preset"] == preset
    assert params["Safe denoiser policy"] == f"enforced by the operator with preset '{preset}' (global)"
    assert operator.patch(f"{V}/policy", json={"enforce": False}).status_code == 200


def test_a_users_preset_is_invisible_to_the_other_user(people, house):
    user, other, _ = people
    bank, _ = house
    name = f"e2e-mine-{uuid.uuid4().hex[:8]}"
    r = user.post(f"{V}/presets", json={"name": name, "banks": [bank], **STEERING})
    assert r.status_code == 201, r.text
    try:
        assert name not in [p["name"] for p in other.get(f"{V}/presets").json()["presets"]]
        assert other.get(f"{V}/presets/{name}").status_code == 404
        asked = {**PLAIN, "alwayson_scripts": {"safe denoiser": {"args": [{"enabled": True, "preset": name}]}}}
        _, params = image_and_params(user.post("/sdapi/v1/txt2img", json=asked))
        assert params["Safe denoiser preset"] == name and params["Safe denoiser preset scope"] == "user"
        refused = other.post("/sdapi/v1/txt2img", json=asked)
        assert refused.status_code == 422 and f"no preset named '{name}'" in refused.json()["detail"]
    finally:
        assert user.delete(f"{V}/presets/{name}").status_code == 200


def test_a_missing_enforced_bank_refuses_the_job(people, house):
    user, _, operator = people
    missing = f"e2e-missing-{uuid.uuid4().hex[:8]}"
    r = operator.post(f"{V}/presets", json={"name": missing, "scope": "global", "banks": [missing], **STEERING})
    assert r.status_code == 201, r.text
    try:
        assert operator.patch(f"{V}/policy", json={"enforce": True, "preset": missing}).status_code == 200
        refused = user.post("/sdapi/v1/txt2img", json=PLAIN)
        assert refused.status_code == 503 and "images" not in refused.json()
        assert f"the bank '{missing}' that the operator's policy requires does not exist" in refused.json()["detail"]
    finally:
        assert operator.patch(f"{V}/policy", json={"enforce": False}).status_code == 200
        operator.delete(f"{V}/presets/{missing}", params={"scope": "global"})
