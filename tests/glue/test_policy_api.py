"""Presets and policy over REST, on a real FastAPI app with the extension's app_started callbacks: the
/safe-denoiser/v1 preset and policy routes, and WebUI-shaped generation routes that run a real job on
the stand-in (as the WebUI's API does: no ``p.user``, the script args from ``alwayson_scripts``)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.testclient import TestClient
from modules import script_callbacks, shared

from lib_safe_denoiser.generation.infotext import KEY_BANK, KEY_PRESET, KEY_PRESET_SCOPE
from lib_safe_denoiser.policy.presets_store import SCOPE_GLOBAL
from tests.glue import harness

V = "/safe-denoiser/v1"
STEERING = {"mode": "constant", "strength": 1.0, "window_start": 0.0, "window_end": 1.0}


def basic(user: str, password: str = "pw") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ALICE, BOB, ROOT = basic("alice"), basic("bob"), basic("root")


@pytest.fixture
def client(glue, banks, monkeypatch):
    """The app as the WebUI starts it with --api-auth (alice, bob; root the operator), its generation routes
    running real jobs. Every preset and policy file written is removed afterwards."""
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:pw,bob:pw,root:pw")
    monkeypatch.setattr(shared.cmd_opts, "safe_denoiser_operators", "root")
    app = FastAPI()

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict) -> dict:
        script = glue.SafeDenoiserScript()
        entry = body.get("alwayson_scripts", {}).get("safe denoiser", {"args": []})
        job = harness.run_job(script, entry["args"])
        glue.unregister_callbacks()
        return {"images": [str(float(i.sum())) for i in job.images], "parameters": body,
                "info": json.dumps({"extra_generation_params": job.p.extra_generation_params})}

    @app.post("/sdapi/v1/options")
    def options(body: dict) -> dict:
        return {"applied": sorted(body)}

    app.add_middleware(GZipMiddleware, minimum_size=10)  # the WebUI gzips answers (from 1000 bytes; here all)
    script_callbacks.app_started_callback(None, app)
    yield TestClient(app)
    for path in (glue.POLICY_STORE.path, *glue.PRESET_STORE.root.rglob("*.json")):
        path.unlink(missing_ok=True)


def generate(client: TestClient, args: list, headers: dict[str, str]):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"safe denoiser": {"args": args}}},
                       headers=headers)


def test_a_preset_named_in_alwayson_scripts_resolves_in_the_callers_scope(client):
    r = client.post(f"{V}/presets", json={"name": "mine", "banks": ["unsafe"], **STEERING}, headers=ALICE)
    assert r.status_code == 201 and r.json()["scope"] == "user" and r.json()["banks"] == ["unsafe"]
    ok = generate(client, [{"enabled": True, "preset": "mine"}], ALICE)
    assert ok.status_code == 200 and len(ok.json()["images"]) == 2
    params = json.loads(ok.json()["info"])["extra_generation_params"]
    assert params[KEY_PRESET] == "mine" and params[KEY_PRESET_SCOPE] == "user" and params[KEY_BANK] == "unsafe"

    refused = generate(client, [{"enabled": True, "preset": "mine"}], BOB)
    assert refused.status_code == 422
    assert refused.json() == {"detail": "safe denoiser: bad arguments: no preset named 'mine' (looked in your "
                                        "presets, the global presets, the built-in recipes)."}
    assert [p["name"] for p in client.get(f"{V}/presets", headers=BOB).json()["presets"]] == [
        "nudity (SD 1.x)", "inappropriate, broad (I2P)", "a person / memorised image", "an artwork / style"]
    assert client.get(f"{V}/presets/mine", headers=BOB).status_code == 404
    assert client.delete(f"{V}/presets/mine", headers=BOB).status_code == 404
    assert client.get(f"{V}/presets/mine", headers=ALICE).json()["strength"] == 1.0


def test_preset_routes_save_rename_default_and_delete(client):
    assert client.get(f"{V}/presets").status_code == 401
    body = {"name": "a", "banks": ["unsafe"], "strength": 0.5}
    assert client.post(f"{V}/presets", json=body, headers=ALICE).status_code == 201
    assert client.post(f"{V}/presets", json=body, headers=ALICE).status_code == 409
    assert client.post(f"{V}/presets", json={**body, "overwrite": True, "strength": 0.6}, headers=ALICE).json()[
        "strength"] == 0.6
    assert client.patch(f"{V}/presets/a", json={"new_name": "b"}, headers=ALICE).json()["name"] == "b"
    assert client.put(f"{V}/default-preset", json={"name": "b"}, headers=ALICE).json() == {
        "default": {"name": "b", "scope": "user"}}
    assert client.get(f"{V}/presets", headers=ALICE).json()["default"] == {"name": "b", "scope": "user"}
    assert client.get(f"{V}/presets", headers=BOB).json()["default"] is None
    assert client.delete(f"{V}/presets/b", headers=ALICE).json() == {"deleted": "b", "scope": "user"}
    assert client.get(f"{V}/presets", headers=ALICE).json()["default"] is None


@pytest.mark.parametrize("body, status, message", [
    ({"name": "../x", "banks": []}, 422, "preset name"),
    ({"name": "custom"}, 422, "reserved"),
    ({"name": "x", "bank": "unsafe"}, 422, "use 'banks': [...]"),
    ({"name": "x", "strength": -1}, 422, "'strength' must be >= 0"),
    ({"name": "x", "scope": "builtin"}, 422, "built-in presets are read-only"),
    ({"name": "x", "overwrite": "yes"}, 422, "'overwrite' must be true or false"),
    ({"name": "x", "scope": "global"}, 403, "only operators may change global presets"),
    (["x"], 422, "a preset must be a JSON object"),
])
def test_bad_preset_requests_are_refused_and_write_nothing(client, glue, body, status, message):
    r = client.post(f"{V}/presets", json=body, headers=ALICE)
    assert r.status_code == status and message in r.json()["detail"]
    assert not list(glue.PRESET_STORE.root.rglob("*.json"))


def test_only_operators_change_the_policy_and_users_see_what_applies_to_them(client, glue):
    change = {"enforce": True, "preset": "house", "floor_banks": ["unsafe"]}
    r = client.patch(f"{V}/policy", json=change, headers=BOB)
    assert r.status_code == 403 and "only operators may change the Safe Denoiser policy" in r.json()["detail"]
    assert not glue.POLICY_STORE.path.exists()
    assert client.patch(f"{V}/policy", json=change, headers=ROOT).status_code == 422, "no preset 'house' yet"
    saved = client.post(f"{V}/presets", json={"name": "house", "scope": "global", **STEERING}, headers=ROOT)
    assert saved.status_code == 201 and saved.json()["scope"] == SCOPE_GLOBAL
    policy = client.patch(f"{V}/policy", json={**change, "operators": ["carol"]}, headers=ROOT).json()
    assert policy["enforce"] and policy["revision"] == 1 and policy["updated_by"] == "root"
    assert "operators" not in client.get(f"{V}/policy", headers=BOB).json()
    stale = client.put(f"{V}/policy", json={**change, "revision": 0}, headers=ROOT)
    assert stale.status_code == 409 and "reload it" in stale.json()["detail"]

    enforced = client.post("/sdapi/v1/txt2img", json={"prompt": "x"}, headers=BOB)
    assert enforced.status_code == 200
    assert json.loads(enforced.json()["info"])["extra_generation_params"][KEY_BANK] == "unsafe"


def test_an_enforced_job_that_cannot_be_steered_is_an_http_error_without_images(client):
    client.post(f"{V}/presets", json={"name": "house", "scope": "global", "banks": ["gone"], **STEERING},
                headers=ROOT)
    assert client.patch(f"{V}/policy", json={"enforce": True, "preset": "house"}, headers=ROOT).status_code == 200
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x"}, headers=BOB)
    assert r.status_code == 503 and "images" not in r.json()
    assert r.json() == client.post("/sdapi/v1/txt2img", json={"prompt": "x"},
                                   headers={**BOB, "Accept-Encoding": "identity"}).json(), "gzipped or not"
    assert r.json()["detail"] == ("safe denoiser: the bank 'gone' that the operator's policy requires does not "
                                  "exist; an operator must create it or change the policy")


def test_locked_settings_cannot_be_changed_over_rest(client):
    assert client.patch(f"{V}/policy", json={"locked_settings": ["sd_vae"]}, headers=ROOT).status_code == 200
    r = client.post("/sdapi/v1/options", json={"sd_vae": "x.vae", "CLIP_stop_at_last_layers": 2}, headers=ROOT)
    assert r.status_code == 403 and "'sd_vae' is locked by the operator" in r.json()["detail"]
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, headers=BOB).json() == {
        "applied": ["CLIP_stop_at_last_layers"]}
    own = client.post("/sdapi/v1/options", json={"safe_denoiser_steer_hires": False}, headers=BOB)
    assert own.status_code == 403, "users never change the extension's own settings over the API"
    assert client.post("/sdapi/v1/options", json={"safe_denoiser_steer_hires": False}, headers=ROOT).json() == {
        "applied": ["safe_denoiser_steer_hires"]}, "operators may"
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {"sd_vae": "x.vae"}},
                    headers=BOB)
    assert r.status_code == 403 and "override_settings" in r.json()["detail"]
