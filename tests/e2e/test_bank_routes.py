"""The bank routes (/safe-denoiser/v1) in a live WebUI, with no restart between steps.

A bank made over REST from awkward files is encoded by the loaded model's real VAE, steers txt2img,
is exported, deleted (and then refused by generation), imported back and steers the same image again.
Every bank gets a fresh name and is deleted afterwards, so the tests pass on a fresh or a used data dir.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
import zipfile

import numpy as np
import pytest
from PIL import Image

V = "/safe-denoiser/v1"
SIZE = 64
LATENT_HW = [SIZE // 8, SIZE // 8]
GENERATE = {"prompt": "a red apple", "negative_prompt": "", "steps": 6, "width": SIZE, "height": SIZE,
            "seed": 4321, "batch_size": 1, "cfg_scale": 7.0, "sampler_name": "Euler a"}
STEER = {"enabled": True, "preset": "custom", "mode": "paper", "strength": 0.9, "gate": False,
         "window_start": 0.0, "window_end": 1.0}


# ---------------------------------------------------------------------------------------- files
def noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    """Images a user may well have: each decodable, none plain 8-bit RGB."""
    rgba = np.asarray(noise(1).convert("RGBA")).copy()
    rgba[:, : SIZE // 2, 3] = 0  # half transparent: a cut-out
    deep = (np.random.default_rng(4).random((SIZE, SIZE)) * 65535).astype(np.uint16)
    return {
        "cut-out.png": encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.gif": encoded(noise(2).convert("P"), "GIF"),
        "print.jpg": encoded(noise(3).convert("CMYK"), "JPEG"),
        "scan-16bit.png": encoded(Image.fromarray(deep), "PNG"),
    }


def broken_files() -> dict[str, bytes]:
    return {
        "truncated.png": encoded(noise(5), "PNG")[:200],
        "empty.png": b"",
        "notes.png": b"not a picture, just text in a file named .png\n",
    }


def b64_items(files: dict[str, bytes]) -> list[dict[str, str]]:
    return [{"name": name, "data": base64.b64encode(data).decode()} for name, data in files.items()]


# ---------------------------------------------------------------------------------------- helpers
@pytest.fixture
def new_bank(webui):
    """Hands out fresh bank names and deletes every one of them afterwards (404: already gone)."""
    names: list[str] = []

    def make() -> str:
        names.append(f"e2e-rest-{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield make
    for name in names:
        r = webui.delete(f"{V}/banks/{name}")
        assert r.status_code in (200, 404), r.text


def generate(webui, bank: str | None = None) -> tuple[list[str], dict]:
    body = dict(GENERATE)
    if bank is not None:
        body["alwayson_scripts"] = {"safe denoiser": {"args": [{**STEER, "bank": bank}]}}
    r = webui.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return data["images"], json.loads(data["info"])


def pixels(images: list[str]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB")) for i in images]


def same(a: list[str], b: list[str]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))


def assert_steered(info: dict, bank: dict) -> None:
    """The infotext names the bank and its hash, counts steps it acted on, and carries no error."""
    params = info["extra_generation_params"]
    assert "Safe denoiser error" not in params, params["Safe denoiser error"]
    assert params["Safe denoiser"] == bank["name"]
    assert params["Safe denoiser hash"] == bank["short_hash"]
    acted, total = map(int, params["Safe denoiser acted"].split("/"))
    assert total == GENERATE["steps"] and acted > 0
    assert f"Safe denoiser: {bank['name']}" in info["infotexts"][0]


def get_bank(webui, name: str) -> dict:
    r = webui.get(f"{V}/banks/{name}")
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------------------------- tests
def test_version_and_schema_describe_the_args_generation_takes(webui):
    version = webui.get(f"{V}/version")
    assert version.status_code == 200 and version.json()["api"] == 1 and version.json()["version"]
    schema = webui.get(f"{V}/schema")
    assert schema.status_code == 200
    fields = schema.json()["$defs"]["fields"]["properties"]
    assert {*STEER, "bank"} <= set(fields)


def test_bank_lifecycle_create_encode_generate_export_delete_import(webui, new_bank):
    name = new_bank()
    good, broken = odd_images(), broken_files()
    r = webui.post(f"{V}/banks", json={"name": name, "description": "made by the e2e suite", "tags": ["e2e"],
                                       "resize": "crop", "images": b64_items({**good, **broken})})
    assert r.status_code == 201, r.text
    created = r.json()
    report, bank = created["report"], created["bank"]
    assert report["added"] == list(good) and report["duplicates"] == []
    assert [s["name"] for s in report["skipped"]] == list(broken)
    assert all(s["reason"] for s in report["skipped"])
    assert bank["n_images"] == len(good) and bank["tags"] == ["e2e"] and bank["description"] == "made by the e2e suite"
    assert name in [b["name"] for b in webui.get(f"{V}/banks").json()["banks"]]

    r = webui.post(f"{V}/banks/{name}/encode", json={"width": SIZE, "height": SIZE})
    assert r.status_code == 200, r.text
    cache = r.json()["cache"]
    assert cache["latent_hw"] == LATENT_HW and cache["n_images"] == len(good) and cache["vae_id"]
    assert [(c["vae_id"], c["latent_hw"]) for c in get_bank(webui, name)["caches"]] == [(cache["vae_id"], LATENT_HW)]

    plain, _ = generate(webui)
    steered, info = generate(webui, name)
    assert_steered(info, bank)
    assert not same(plain, steered), "the bank must change the image"

    r = webui.get(f"{V}/banks/{name}/export", params={"latents": "include"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text[:300]
    archive = r.content
    assert zipfile.ZipFile(io.BytesIO(archive)).testzip() is None

    r = webui.delete(f"{V}/banks/{name}")
    assert r.status_code == 200 and r.json() == {"deleted": name}
    r = webui.get(f"{V}/banks/{name}")
    assert r.status_code == 404 and name in r.json()["detail"]
    gone = webui.post("/sdapi/v1/txt2img", json={**GENERATE, "alwayson_scripts": {
        "safe denoiser": {"args": [{**STEER, "bank": name}]}}})
    assert gone.status_code == 422 and f"no bank named '{name}'" in gone.json()["detail"], "fails closed"

    r = webui.post(f"{V}/banks/import", files={"file": (f"{name}.zip", archive, "application/zip")})
    assert r.status_code == 201, r.text
    assert r.json()["bank"]["content_hash"] == bank["content_hash"]
    back = get_bank(webui, name)
    assert [i["source_name"] for i in back["images"]] == list(good)
    assert (cache["vae_id"], LATENT_HW) in [(c["vae_id"], c["latent_hw"]) for c in back["caches"]]

    again, info_again = generate(webui, name)
    assert_steered(info_again, back["bank"])
    assert same(steered, again), "the imported bank must steer exactly as the original did"


def test_edit_a_bank_upload_add_remove_rename_then_generate(webui, new_bank):
    name, renamed = new_bank(), new_bank()
    first, second = encoded(noise(10), "PNG"), encoded(noise(11), "PNG")
    r = webui.post(f"{V}/banks", json={"name": name, "images": b64_items({"a.png": first, "b.png": second})})
    assert r.status_code == 201, r.text

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inner.png", encoded(noise(12), "PNG"))
        z.writestr("readme.png", b"text, not an image")
    uploads = [("files", ("new.jpg", encoded(noise(13), "JPEG"), "image/jpeg")),
               ("files", ("again-a.png", first, "image/png")),
               ("files", ("more.zip", archive.getvalue(), "application/zip")),
               ("files", ("cut.png", first[:100], "image/png"))]
    r = webui.post(f"{V}/banks/{name}/images/upload", files=uploads)
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert report["added"] == ["new.jpg", "more.zip/inner.png"] and report["duplicates"] == ["again-a.png"]
    assert {s["name"] for s in report["skipped"]} == {"more.zip/readme.png", "cut.png"}
    assert r.json()["bank"]["n_images"] == 4

    r = webui.post(f"{V}/banks/{name}/images", json={"images": [
        *b64_items({"base64.png": encoded(noise(14), "PNG")}), {"name": "garbled", "data": "not base64 !!"}]})
    assert r.status_code == 200, r.text
    assert r.json()["report"]["added"] == ["base64.png"]
    assert [s["name"] for s in r.json()["report"]["skipped"]] == ["garbled"]

    entries = get_bank(webui, name)["images"]
    drop = [e["sha256"] for e in entries if e["source_name"] in ("a.png", "new.jpg")]
    r = webui.post(f"{V}/banks/{name}/images/remove", json={"sha256": drop})
    assert r.status_code == 200 and r.json()["bank"]["n_images"] == 3, r.text

    r = webui.patch(f"{V}/banks/{name}", json={"new_name": renamed, "description": "renamed by e2e"})
    assert r.status_code == 200, r.text
    assert webui.get(f"{V}/banks/{name}").status_code == 404
    bank = get_bank(webui, renamed)
    assert bank["bank"]["description"] == "renamed by e2e"
    assert sorted(e["source_name"] for e in bank["images"]) == ["b.png", "base64.png", "more.zip/inner.png"]

    _, info = generate(webui, renamed)  # never encoded: the first generation encodes it
    assert_steered(info, bank["bank"])


def test_bad_requests_name_the_problem(webui, new_bank):
    name = new_bank()
    r = webui.post(f"{V}/banks", json={"name": name, "images": b64_items(broken_files())})
    assert r.status_code == 422
    assert all(file in r.json()["detail"] for file in broken_files()), r.text
    assert webui.get(f"{V}/banks/{name}").status_code == 404, "nothing is saved when no file is usable"

    r = webui.post(f"{V}/banks", json={"name": name, "images": b64_items({"a.png": encoded(noise(20), "PNG")})})
    assert r.status_code == 201, r.text
    r = webui.post(f"{V}/banks", json={"name": name.upper(), "images": b64_items({"b.png": encoded(noise(21), "PNG")})})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]

    r = webui.post(f"{V}/banks/{name}/encode", json={"width": SIZE - 4, "height": SIZE})
    assert r.status_code == 422 and "multiples of 8" in r.json()["detail"]
    r = webui.post(f"{V}/banks", json={"name": "../escape", "images": b64_items({"a.png": b"x"})})
    assert r.status_code == 422 and "path" in r.json()["detail"]
    r = webui.get(f"{V}/banks/no-such-bank-{uuid.uuid4().hex[:6]}")
    assert r.status_code == 404 and "no bank named" in r.json()["detail"]
