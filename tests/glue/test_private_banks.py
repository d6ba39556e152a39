"""A private bank is usable only by its owner in generation, by every path: the UI user (``p.user``),
an authenticated REST caller (``--api-auth``), the dropdown choices and the diagnostics panel."""

from __future__ import annotations

import base64

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from modules import script_callbacks, shared

from lib_safe_denoiser.generation.infotext import KEY_ERROR, KEY_HASH
from lib_safe_denoiser.policy.request_user import api_user
from tests.glue import harness
from tests.glue.conftest import smooth_picture


@pytest.fixture
def with_users(glue, banks, tmp_path):
    """Auth on (alice and bob; nobody is an operator) and a private bank of alice's."""
    before = shared.cmd_opts.api_auth, shared.cmd_opts.safe_denoiser_operators
    shared.cmd_opts.api_auth = "alice:pw1,bob:pw2"
    shared.cmd_opts.safe_denoiser_operators = None
    picture = tmp_path / "a.png"
    smooth_picture(1).save(picture)
    glue.STORE.create("alice-private", [picture], owner="alice", overwrite=True)
    yield
    glue.STORE.delete("alice-private")
    shared.cmd_opts.api_auth, shared.cmd_opts.safe_denoiser_operators = before


def args(bank):
    return [{"enabled": True, "bank": bank, "preset": "custom", "mode": "constant", "strength": 1.0,
             "window_start": 0.0, "window_end": 1.0}]


def test_the_owner_generates_with_their_bank(script, with_users):
    p = harness.Processing(sd_model=shared.sd_model)
    p.user = "alice"
    result = harness.run_job(script, args("alice-private"), p=p)
    assert KEY_ERROR not in result.p.extra_generation_params and len(result.images) == 2
    assert len(result.p.extra_generation_params[KEY_HASH]) == 10


def test_another_user_is_refused_as_if_the_bank_did_not_exist(script, with_users):
    p = harness.Processing(sd_model=shared.sd_model)
    p.user = "bob"
    result = harness.run_job(script, args("alice-private"), p=p)
    error = result.p.extra_generation_params[KEY_ERROR]
    assert "no bank named 'alice-private'" in error and result.images == []
    assert "alice-private" not in error.split("banks you can use:")[1], "the list must not reveal it"
    assert "'unsafe'" in error, "shared banks are listed"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def api(glue, script, with_users):
    """A FastAPI app whose txt2img route runs a job through the script for the REST caller, with the
    extension's middlewares (as on_app_started installs them)."""
    app = FastAPI()

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict):  # a sync route, like the WebUI's: it runs in a worker thread
        result = harness.run_job(script, body["alwayson_scripts"]["safe denoiser"]["args"])
        return {"user": api_user(), "images": len(result.images),
                "error": result.p.extra_generation_params.get(KEY_ERROR)}

    script_callbacks.app_started_callback(None, app)
    return TestClient(app)


def payload(bank):
    return {"prompt": "x", "alwayson_scripts": {"safe denoiser": {"args": args(bank)}}}


def test_rest_generation_runs_for_the_authenticated_caller(api):
    r = api.post("/sdapi/v1/txt2img", json=payload("alice-private"), headers=_basic("alice", "pw1"))
    assert r.json() == {"user": "alice", "images": 2, "error": None}
    r = api.post("/sdapi/v1/txt2img", json=payload("alice-private"), headers=_basic("bob", "pw2"))
    body = r.json()
    assert body["user"] == "bob" and body["images"] == 0 and "no bank named 'alice-private'" in body["error"]
    r = api.post("/sdapi/v1/txt2img", json=payload("alice-private"), headers=_basic("alice", "wrong"))
    assert r.json()["user"] is None and r.json()["images"] == 0, "bad credentials are nobody"
    assert api_user() is None, "the caller does not leak past the request"


def test_choices_and_diagnostics_are_per_user(glue, script, with_users):
    class Request:
        def __init__(self, username):
            self.username = username

    assert "alice-private" in glue.bank_choices(Request("alice"))["choices"]
    assert "alice-private" not in glue.bank_choices(Request("bob"))["choices"]
    p = harness.Processing(sd_model=shared.sd_model)
    p.user = "alice"
    harness.run_job(script, args("alice-private"), p=p)
    assert "alice-private" in glue.diagnostics(False, Request("alice"))[0]
    assert "alice-private" not in glue.diagnostics(False, Request("bob"))[0]
