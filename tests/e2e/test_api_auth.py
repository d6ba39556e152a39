"""The bank routes of a WebUI started with ``--api-auth``: 401 without credentials or with wrong ones,
200 with them, and a user's private bank hidden from another user.

Needs SD_WEBUI_AUTH_URL (that instance), SD_WEBUI_AUTH_USER / SD_WEBUI_AUTH_PASSWORD (one of its users)
and, for the private-bank check, SD_WEBUI_AUTH_OTHER_USER / SD_WEBUI_AUTH_OTHER_PASSWORD (another one);
skipped without them. The WebUI guards only its own routes with ``--api-auth``; the extension's routes
check it themselves, which is what this proves.
"""

from __future__ import annotations

import base64
import io
import os
import uuid

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import AUTH_PASSWORD, AUTH_URL, AUTH_USER

V = "/safe-denoiser/v1"
OTHER_USER = os.environ.get("SD_WEBUI_AUTH_OTHER_USER", "")
OTHER_PASSWORD = os.environ.get("SD_WEBUI_AUTH_OTHER_PASSWORD", "")

pytestmark = pytest.mark.skipif(
    not (AUTH_URL and AUTH_USER and AUTH_PASSWORD),
    reason="SD_WEBUI_AUTH_URL, SD_WEBUI_AUTH_USER and SD_WEBUI_AUTH_PASSWORD name no --api-auth WebUI",
)

READ_ROUTES = ["/version", "/schema", "/banks"]


def client(auth: tuple[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=AUTH_URL, timeout=600, auth=auth)


def picture_b64(seed: int) -> str:
    img = Image.new("RGB", (64, 64), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def owner():
    with client((AUTH_USER, AUTH_PASSWORD)) as c:
        yield c


@pytest.fixture
def private_bank(owner):
    """A bank the configured user makes (private to them: users who are no operators cannot share)."""
    name = f"e2e-auth-{uuid.uuid4().hex[:10]}"
    r = owner.post(f"{V}/banks", json={"name": name, "images": [{"name": "a.png", "data": picture_b64(1)}]})
    assert r.status_code == 201, r.text
    yield name, r.json()["bank"]
    assert owner.delete(f"{V}/banks/{name}").status_code in (200, 404)


@pytest.mark.parametrize("auth", [None, (AUTH_USER, AUTH_PASSWORD + "-wrong"), ("nobody-e2e", AUTH_PASSWORD)],
                         ids=["no credentials", "wrong password", "unknown user"])
def test_refused_without_the_right_credentials(private_bank, auth):
    name, _ = private_bank
    with client(auth) as c:
        answers = [c.get(V + route) for route in READ_ROUTES]
        answers += [
            c.get(f"{V}/banks/{name}"),
            c.get(f"{V}/banks/{name}/export"),
            c.post(f"{V}/banks", json={"name": name + "-x", "images": [{"name": "b.png", "data": picture_b64(2)}]}),
            c.post(f"{V}/banks/{name}/images", json={"images": [{"name": "c.png", "data": picture_b64(3)}]}),
            c.post(f"{V}/banks/{name}/encode", json={"width": 64, "height": 64}),
            c.patch(f"{V}/banks/{name}", json={"description": "changed"}),
            c.delete(f"{V}/banks/{name}"),
            c.post(f"{V}/banks/import", files={"file": ("x.zip", b"PK\x05\x06" + bytes(18), "application/zip")}),
        ]
    for r in answers:
        assert r.status_code == 401, f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}"
        assert r.headers.get("www-authenticate", "").lower().startswith("basic")
        assert r.json()["detail"]


def test_the_routes_answer_with_credentials(owner, private_bank):
    name, bank = private_bank
    for route in READ_ROUTES:
        r = owner.get(V + route)
        assert r.status_code == 200, f"GET {route}: {r.text[:200]}"
    assert bank["owner"] == AUTH_USER
    assert name in [b["name"] for b in owner.get(f"{V}/banks").json()["banks"]]
    r = owner.get(f"{V}/banks/{name}")
    assert r.status_code == 200 and r.json()["bank"]["n_images"] == 1
    r = owner.post(f"{V}/banks/{name}/encode", json={"width": 64, "height": 64})
    assert r.status_code == 200 and r.json()["cache"]["latent_hw"] == [8, 8], r.text
    r = owner.get(f"{V}/banks/{name}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    r = owner.patch(f"{V}/banks/{name}", json={"description": "changed by its owner"})
    assert r.status_code == 200 and r.json()["bank"]["description"] == "changed by its owner"
    r = owner.delete(f"{V}/banks/{name}")
    assert r.status_code == 200 and r.json() == {"deleted": name}


@pytest.mark.skipif(not (OTHER_USER and OTHER_PASSWORD),
                    reason="SD_WEBUI_AUTH_OTHER_USER / SD_WEBUI_AUTH_OTHER_PASSWORD name no second user")
def test_another_user_cannot_see_a_private_bank(private_bank):
    name, _ = private_bank
    with client((OTHER_USER, OTHER_PASSWORD)) as other:
        assert other.get(f"{V}/version").status_code == 200
        assert name not in [b["name"] for b in other.get(f"{V}/banks").json()["banks"]]
        for r in (other.get(f"{V}/banks/{name}"), other.delete(f"{V}/banks/{name}"),
                  other.get(f"{V}/banks/{name}/export")):
            assert r.status_code == 404 and r.json()["detail"] == f"no bank named {name!r}", r.text


def _txt2img(c: httpx.Client, bank: str) -> httpx.Response:
    return c.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
        "alwayson_scripts": {"safe denoiser": {"args": [{"enabled": True, "bank": bank, "preset": "custom",
                                                         "mode": "constant", "strength": 1.0}]}}})


@pytest.mark.skipif(not (OTHER_USER and OTHER_PASSWORD),
                    reason="SD_WEBUI_AUTH_OTHER_USER / SD_WEBUI_AUTH_OTHER_PASSWORD name no second user")
def test_only_the_owner_generates_with_a_private_bank(owner, private_bank):
    """The WebUI sets no user on API jobs: the extension reads the caller from the credentials."""
    name, info = private_bank
    r = _txt2img(owner, name)
    assert r.status_code == 200, r.text
    mine = r.json()
    assert mine["images"] and "Safe denoiser error" not in mine["info"], mine["info"]
    assert info["short_hash"] in mine["info"]
    with client((OTHER_USER, OTHER_PASSWORD)) as other:
        theirs = _txt2img(other, name)
    assert theirs.status_code == 422 and "images" not in theirs.json(), "another user's job must fail closed"
    assert f"no bank named '{name}'" in theirs.json()["detail"] and info["short_hash"] not in theirs.text
