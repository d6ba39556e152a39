"""The bank routes (/safe-denoiser/v1): a real store on temp dirs, real images made here, FastAPI's
TestClient; first the library router on its own, then as scripts/safe_denoiser_api.py mounts it."""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time
import zipfile
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from modules import script_callbacks, shared
from PIL import Image

import lib_safe_denoiser
from lib_safe_denoiser.banks.inputs import MIB, InputLimits
from lib_safe_denoiser.banks.routes import API_PREFIX, BankApi, RouteSettings, build_router
from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.errors import BankError
from lib_safe_denoiser.generation.schema import args_schema
from safe_denoiser_webui import options
from safe_denoiser_webui.model import encoder_for
from tests.glue import harness
from tests.glue.conftest import smooth_picture

V = API_PREFIX
VAE = "tiny-vae"
WAIT_S = 60.0
"""How long a test waits for the job worker before it fails (never reached when things work)."""

ROUTES = [
    ("GET", "/version"), ("GET", "/schema"), ("GET", "/banks"), ("POST", "/banks"), ("POST", "/banks/import"),
    ("GET", "/banks/{name}"), ("PATCH", "/banks/{name}"), ("DELETE", "/banks/{name}"),
    ("POST", "/banks/{name}/images"), ("POST", "/banks/{name}/images/upload"),
    ("POST", "/banks/{name}/images/remove"), ("GET", "/banks/{name}/images/{sha256}"),
    ("GET", "/banks/{name}/images/{sha256}/thumbnail"), ("POST", "/banks/{name}/encode"),
    ("GET", "/jobs/{job_id}"), ("POST", "/jobs/{job_id}/cancel"), ("DELETE", "/banks/{name}/caches"),
    ("GET", "/banks/{name}/export"), ("POST", "/banks/{name}/folder"),
]
NAMED_ROUTES = [r for r in ROUTES if "{name}" in r[1]]
POLICY_ROUTES = [
    ("GET", "/presets"), ("GET", "/presets/{name}"), ("POST", "/presets"), ("PATCH", "/presets/{name}"),
    ("DELETE", "/presets/{name}"), ("PUT", "/default-preset"), ("GET", "/policy"), ("PUT", "/policy"),
    ("PATCH", "/policy"),
]


# ---------------------------------------------------------------------------------------- helpers
def png(seed: int, size: int = 64) -> bytes:
    buf = io.BytesIO()
    smooth_picture(seed, size).save(buf, format="PNG")
    return buf.getvalue()


CORRUPT = png(99)[:80]
"""A PNG cut off after its header: a truncated download."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def item(name: str, data: bytes) -> dict:
    return {"name": name, "data": b64(data)}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64(f"{user}:{password}".encode())}


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def url(template: str, name: str = "x", sha256: str = "0" * 64, job_id: str = "nojob") -> str:
    return V + template.format(name=quote(name, safe=""), sha256=sha256, job_id=job_id)


class Host:
    """The routes over a fresh store, with settings and an encoder (TinyModel's VAE) the test controls."""

    def __init__(self, root) -> None:
        self.store = BankStore(root)
        self.settings = RouteSettings()
        self.model = harness.TinyModel()
        self.problem: str | None = None
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.app = FastAPI()
        self.app.include_router(build_router(BankApi(self.store, self.encode, lambda: self.settings)))
        self.client = TestClient(self.app)

    def configure(self, **changes) -> None:
        self.settings = dataclasses.replace(self.settings, **changes)

    def encode(self, bank, width, height, progress):
        if self.problem:
            raise BankError(self.problem)
        hw = (height // 8, width // 8)

        def report(done, total):
            progress(done, total)
            self.started.set()
            assert self.release.wait(WAIT_S)

        self.store.latents(bank, encoder=encoder_for(self.model), vae_id=VAE, latent_hw=hw, batch_size=1,
                           progress=report)
        return {"bank": bank, "vae_id": VAE, "latent_hw": list(hw)}

    def bank(self, name, seeds=(1, 2, 3), headers=None, **fields):
        r = self.client.post(f"{V}/banks", json={"name": name, "images": [item(f"p{s}.png", png(s)) for s in seeds],
                                                 **fields}, headers=headers or {})
        assert r.status_code == 201, r.json()
        return r.json()

    def poll(self, job_id, headers=None, until=("done", "failed", "cancelled")):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            status = self.client.get(f"{V}/jobs/{job_id}", headers=headers or {}).json()
            if status["status"] in until:
                return status
            time.sleep(0.01)
        raise AssertionError(f"job {job_id} did not reach {until}: {status}")

    def snapshot(self):
        """Everything a refused request must leave as it was."""
        return {info.name: (info.content_hash, info.description, info.owner, info.tags, info.n_images,
                            len(self.store.cache_status(info.name))) for info in self.store.list()}


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path / "store")


ALICE, BOB, CAROL = basic("alice", "a-pw"), basic("bob", "b-pw"), basic("carol", "c-pw")


@pytest.fixture
def users(host):
    """alice and bob are users, carol is an operator."""
    host.configure(api_auth="alice:a-pw,bob:b-pw,carol:c-pw", operators="carol")
    return host


# ---------------------------------------------------------------------------------------- about
def test_version_and_schema(host):
    assert host.client.get(f"{V}/version").json() == {"version": lib_safe_denoiser.__version__, "api": 1}
    assert host.client.get(f"{V}/schema").json() == args_schema()


def test_openapi_lists_every_route_with_a_summary(host):
    paths = host.app.openapi()["paths"]
    found = {(method.upper(), path[len(V):]) for path, ops in paths.items() for method in ops}
    assert found == set(ROUTES)
    assert all(op.get("summary") for ops in paths.values() for op in ops.values())


# ---------------------------------------------------------------------------------------- banks
def test_create_reports_bad_and_duplicate_images_and_lists_the_bank(host):
    r = host.client.post(f"{V}/banks", json={
        "name": "cats", "description": "some cats", "tags": ["pets"], "resize": "pad",
        "images": [item("a.png", png(1)), item("b.png", png(2)), item("again.png", png(1)),
                   item("broken.png", CORRUPT), {"name": "text.png", "data": "not base64!"},
                   {"data": "data:image/png;base64," + b64(png(3))}],
    })
    assert r.status_code == 201
    bank, report = r.json()["bank"], r.json()["report"]
    assert bank["name"] == "cats" and bank["n_images"] == 3 and bank["owner"] is None
    assert bank["description"] == "some cats" and bank["tags"] == ["pets"] and bank["resize"] == "pad"
    assert report["added"] == ["a.png", "b.png", "image-6"] and report["duplicates"] == ["again.png"]
    assert {s["name"] for s in report["skipped"]} == {"broken.png", "text.png"}
    assert "not valid base64" in next(s["reason"] for s in report["skipped"] if s["name"] == "text.png")
    assert "skipped 2" in report["summary"]
    listed = host.client.get(f"{V}/banks").json()["banks"]
    assert [b["name"] for b in listed] == ["cats"] and listed[0]["content_hash"] == bank["content_hash"]


def test_create_uses_the_default_resize_setting(host):
    host.configure(default_resize="stretch")
    assert host.bank("wide")["bank"]["resize"] == "stretch"


@pytest.mark.parametrize("body, status, words", [
    ({"name": "bad", "images": [item("x.png", CORRUPT), {"name": "y.png", "data": "%%"}]}, 422,
     ["x.png", "y.png", "not valid base64"]),
    ({"name": "bad", "images": []}, 422, ["no images"]),
    ({"name": "bad"}, 422, ["images", "field required"]),
    ({"name": "bad", "images": [item("a.png", png(1))], "resize": "squash"}, 422, ["squash"]),
    ({"name": "bad", "images": [item("a.png", png(1))], "tags": "one"}, 422, ["tags"]),
    ({"name": "taken", "images": [item("a.png", png(1))]}, 409, ["already exists"]),
    ({"name": "TAKEN", "images": [item("a.png", png(1))]}, 409, ["case-insensitive"]),
])
def test_create_errors(host, body, status, words):
    host.bank("taken")
    before = host.snapshot()
    r = host.client.post(f"{V}/banks", json=body)
    assert r.status_code == status
    assert all(w in r.json()["detail"] for w in words), r.json()
    assert host.snapshot() == before


def test_a_body_that_is_not_json_is_a_422(host):
    r = host.client.post(f"{V}/banks", content=b"{name", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid request")


def test_get_bank_shows_images_caches_and_near_duplicates(host):
    near = Image.open(io.BytesIO(png(1))).point(lambda v: min(255, v + 2))
    buf = io.BytesIO()
    near.save(buf, format="PNG")
    host.client.post(f"{V}/banks", json={"name": "b", "images": [item("a.png", png(1)), item("a2.png", buf.getvalue()),
                                                                 item("c.png", png(2))]})
    detail = host.client.get(f"{V}/banks/b").json()
    assert [e["source_name"] for e in detail["images"]] == ["a.png", "a2.png", "c.png"]
    shas = [e["sha256"] for e in detail["images"]]
    assert detail["caches"] == []
    assert [(p["a"], p["b"]) for p in detail["near_duplicates"]] == [(shas[0], shas[1])]
    missing = host.client.get(f"{V}/banks/ghost")
    assert missing.status_code == 404 and missing.json()["detail"] == "no bank named 'ghost'"


def test_patch_changes_and_renames(host):
    host.bank("cats")
    host.bank("dogs", seeds=(4,))
    r = host.client.patch(f"{V}/banks/cats", json={"description": "felines", "tags": ["a", "b"], "resize": "pad"})
    assert r.status_code == 200
    assert (r.json()["bank"]["description"], r.json()["bank"]["tags"], r.json()["bank"]["resize"]) == (
        "felines", ["a", "b"], "pad")
    r = host.client.patch(f"{V}/banks/cats", json={"new_name": "kitties", "description": "small felines"})
    assert r.status_code == 200 and r.json()["bank"]["name"] == "kitties"
    assert host.store.names() == ["dogs", "kitties"] and host.store.get("kitties").description == "small felines"
    assert host.client.patch(f"{V}/banks/kitties", json={"new_name": "KITTIES"}).json()["bank"]["name"] == "KITTIES"
    before = host.snapshot()
    for body, status, word in [({"new_name": "dogs"}, 409, "already exists"), ({}, 422, "nothing to change"),
                               ({"resize": "squash"}, 422, "squash"), ({"new_name": "../up"}, 422, "path"),
                               ({"tags": ["x" * 500]}, 422, "tag")]:
        r = host.client.patch(f"{V}/banks/KITTIES", json=body)
        assert r.status_code == status and word in r.json()["detail"], r.json()
    assert host.snapshot() == before
    assert host.client.patch(f"{V}/banks/ghost", json={"description": "x"}).status_code == 404


def test_delete(host):
    host.bank("cats")
    assert host.client.delete(f"{V}/banks/cats").json() == {"deleted": "cats"}
    assert host.client.get(f"{V}/banks/cats").status_code == 404 and host.store.names() == []
    assert host.client.delete(f"{V}/banks/cats").status_code == 404


# ---------------------------------------------------------------------------------------- images
def test_add_images_as_base64(host):
    host.bank("cats", seeds=(1,))
    r = host.client.post(f"{V}/banks/cats/images", json={"images": [item("new.png", png(2)), item("old.png", png(1)),
                                                                    item("bad.png", CORRUPT)]})
    assert r.status_code == 200
    report = r.json()["report"]
    assert report["added"] == ["new.png"] and report["duplicates"] == ["old.png"]
    assert [s["name"] for s in report["skipped"]] == ["bad.png"] and r.json()["bank"]["n_images"] == 2
    r = host.client.post(f"{V}/banks/cats/images", json={"images": [item("bad.png", CORRUPT),
                                                                    {"name": "t", "data": "??"}]})
    assert r.status_code == 422 and "bad.png" in r.json()["detail"] and "t: its data" in r.json()["detail"]
    assert host.store.get("cats").n_images == 2
    assert host.client.post(f"{V}/banks/ghost/images", json={"images": [item("a.png", png(3))]}).status_code == 404


def test_upload_files_and_zips(host):
    host.bank("cats", seeds=(1,))
    archive = zip_of({"p2.png": png(2), "sub/p3.png": png(3), "notes.txt": b"hello", "../evil.png": png(4)})
    r = host.client.post(f"{V}/banks/cats/images/upload", files=[
        ("files", ("a.png", png(5), "image/png")), ("files", ("broken.png", CORRUPT, "image/png")),
        ("files", ("set.zip", archive, "application/zip")), ("files", ("bad.zip", b"PK not a zip", "application/zip")),
    ])
    assert r.status_code == 200, r.json()
    report = r.json()["report"]
    assert report["added"] == ["a.png", "set.zip/p2.png", "set.zip/sub/p3.png"]
    assert {s["name"] for s in report["skipped"]} == {"broken.png", "set.zip/notes.txt", "set.zip/../evil.png",
                                                      "bad.zip"}
    assert r.json()["bank"]["n_images"] == 4
    r = host.client.post(f"{V}/banks/cats/images/upload", files=[("files", ("broken.png", CORRUPT, "image/png"))])
    assert r.status_code == 422 and "broken.png" in r.json()["detail"]
    assert host.client.post(f"{V}/banks/cats/images/upload").status_code == 422  # no files at all


def test_upload_file_count_limit_skips_the_rest(host):
    host.bank("cats", seeds=(1,))
    host.configure(limits=InputLimits(max_files=2))
    r = host.client.post(f"{V}/banks/cats/images/upload",
                         files=[("files", (f"{s}.png", png(s), "image/png")) for s in (2, 3, 4)])
    assert r.json()["report"]["added"] == ["2.png", "3.png"]
    assert "limit of 2 files" in r.json()["report"]["skipped"][0]["reason"]


def test_remove_images(host):
    host.bank("cats")
    shas = [e["sha256"] for e in host.client.get(f"{V}/banks/cats").json()["images"]]
    r = host.client.post(f"{V}/banks/cats/images/remove", json={"sha256": [shas[0]]})
    assert r.status_code == 200 and r.json()["bank"]["n_images"] == 2
    before = host.snapshot()
    for body, word in [({"sha256": [shas[0]]}, "no image"), ({"sha256": shas[1:]}, "delete the bank instead"),
                       ({"sha256": ["../x"]}, "not an image hash"), ({"sha256": []}, "no images to remove"),
                       ({}, "field required")]:
        r = host.client.post(f"{V}/banks/cats/images/remove", json=body)
        assert r.status_code == 422 and word in r.json()["detail"], r.json()
    assert host.snapshot() == before


def test_image_file_and_thumbnail(host):
    host.bank("cats", seeds=(1, 2))
    entry = host.client.get(f"{V}/banks/cats").json()["images"][1]
    r = host.client.get(f"{V}/banks/cats/images/{entry['sha256']}")
    assert r.status_code == 200 and r.content == png(2) and r.headers["content-type"] == "image/png"
    r = host.client.get(f"{V}/banks/cats/images/{entry['sha256']}/thumbnail")
    thumb = Image.open(io.BytesIO(r.content))
    assert r.headers["content-type"] == "image/png" and thumb.format == "PNG" and max(thumb.size) <= 128
    for sha in ("0" * 64, "nothex", "../../etc"):
        for suffix in ("", "/thumbnail"):
            r = host.client.get(f"{V}/banks/cats/images/{quote(sha, safe='')}{suffix}")
            assert r.status_code == 404 and r.json()["detail"], (sha, suffix)


# ---------------------------------------------------------------------------------------- latents
def test_encode_and_wait(host):
    host.bank("cats")
    r = host.client.post(f"{V}/banks/cats/encode", json={"width": 64, "height": 64})
    assert r.status_code == 200, r.json()
    cache = r.json()["cache"]
    assert cache["vae_id"] == VAE and cache["latent_hw"] == [8, 8] and cache["bytes"] > 0
    calls = host.model.first_stage_model.calls
    assert calls == 3
    (listed,) = host.client.get(f"{V}/banks/cats").json()["caches"]
    assert cache == {**listed, "bank": "cats"}  # the cache entry, and what the encoder said
    host.client.post(f"{V}/banks/cats/encode", json={"width": 64, "height": 64})
    assert host.model.first_stage_model.calls == calls  # cached: the VAE is not run again


@pytest.mark.parametrize("body, status, word", [
    ({"width": 60, "height": 64}, 422, "multiples of 8"),
    ({"width": 0}, 422, "width"),
    ({"height": 100_000}, 422, "height"),
    ({"width": "wide"}, 422, "width"),
])
def test_encode_refuses_bad_sizes(host, body, status, word):
    host.bank("cats")
    r = host.client.post(f"{V}/banks/cats/encode", json=body)
    assert r.status_code == status and word in r.json()["detail"]


def test_encode_when_the_server_cannot_is_a_409(host):
    host.bank("cats")
    host.problem = "no model is loaded"
    r = host.client.post(f"{V}/banks/cats/encode", json={})
    assert r.status_code == 409 and r.json()["detail"] == "no model is loaded"
    assert host.client.post(f"{V}/banks/ghost/encode", json={}).status_code == 404


def test_encode_job_is_polled_to_done(host):
    host.bank("cats")
    host.release.clear()
    r = host.client.post(f"{V}/banks/cats/encode", json={"width": 64, "height": 64, "wait": False})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and job["total"] == 3 and job["bank"] == "cats"
    assert host.started.wait(WAIT_S)
    running = host.client.get(f"{V}/jobs/{job['job_id']}").json()
    assert running["status"] == "running" and running["done"] == 1 and running["total"] == 3
    host.release.set()
    done = host.poll(job["job_id"])
    assert done["status"] == "done" and done["done"] == 3 and done["error"] == ""
    assert done["cache"]["vae_id"] == VAE and done["cache"]["latent_hw"] == [8, 8]
    assert len(host.store.cache_status("cats")) == 1


def test_encode_job_cancelled_while_running_caches_nothing(host):
    host.bank("cats")
    host.release.clear()
    job = host.client.post(f"{V}/banks/cats/encode", json={"width": 64, "height": 64, "wait": False}).json()
    assert host.started.wait(WAIT_S)
    queued = host.client.post(f"{V}/banks/cats/encode", json={"width": 128, "height": 64, "wait": False}).json()
    assert host.client.post(f"{V}/jobs/{queued['job_id']}/cancel").json()["status"] == "cancelled"
    assert host.client.post(f"{V}/jobs/{job['job_id']}/cancel").json()["status"] == "running"
    host.release.set()
    assert host.poll(job["job_id"])["status"] == "cancelled"
    assert host.poll(queued["job_id"])["error"] == "cancelled before it started"
    assert host.store.cache_status("cats") == []


def test_encode_job_failure_is_reported(host):
    host.bank("cats")
    host.problem = "no model is loaded"
    job = host.client.post(f"{V}/banks/cats/encode", json={"wait": False}).json()
    failed = host.poll(job["job_id"])
    assert failed["status"] == "failed" and failed["error"] == "no model is loaded"
    r = host.client.get(f"{V}/jobs/no-such-job")
    assert r.status_code == 404 and "no-such-job" in r.json()["detail"]
    assert host.client.post(f"{V}/jobs/no-such-job/cancel").status_code == 404


def test_drop_caches(host):
    host.bank("cats")
    for width in (64, 128):
        host.client.post(f"{V}/banks/cats/encode", json={"width": width, "height": 64})
    assert host.client.delete(f"{V}/banks/cats/caches", params={"vae_id": "other"}).json() == {"removed": 0}
    for params, word in [({"width": 64}, "both"), ({"width": 60, "height": 64}, "multiples of 8"),
                         ({"width": -8, "height": 64}, "width")]:
        r = host.client.delete(f"{V}/banks/cats/caches", params=params)
        assert r.status_code == 422 and word in r.json()["detail"]
    r = host.client.delete(f"{V}/banks/cats/caches", params={"width": 64, "height": 64, "vae_id": VAE})
    assert r.json() == {"removed": 1}
    assert [c["latent_hw"] for c in host.client.get(f"{V}/banks/cats").json()["caches"]] == [[8, 16]]
    assert host.client.delete(f"{V}/banks/cats/caches").json() == {"removed": 1}
    assert host.client.delete(f"{V}/banks/ghost/caches").status_code == 404


# ---------------------------------------------------------------------------------------- transfer
def test_export_then_import_round_trip(host):
    host.bank("cats", description="felines", tags=["pets"])
    host.client.post(f"{V}/banks/cats/encode", json={"width": 64, "height": 64})
    original = host.client.get(f"{V}/banks/cats").json()
    r = host.client.get(f"{V}/banks/cats/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert 'filename="cats' in r.headers["content-disposition"] and zipfile.is_zipfile(io.BytesIO(r.content))
    archive = r.content
    host.client.delete(f"{V}/banks/cats")
    r = host.client.post(f"{V}/banks/import", files={"file": ("cats.zip", archive, "application/zip")})
    assert r.status_code == 201, r.json()
    bank = r.json()["bank"]
    assert bank["name"] == "cats" and bank["content_hash"] == original["bank"]["content_hash"]
    assert (bank["description"], bank["tags"]) == ("felines", ["pets"])
    restored = host.client.get(f"{V}/banks/cats").json()
    assert restored["images"] == original["images"] and len(restored["caches"]) == 1
    first = original["images"][0]["sha256"]
    assert host.client.get(f"{V}/banks/cats/images/{first}").content == png(1)

    copy = host.client.post(f"{V}/banks/import", files={"file": ("c.zip", archive)}, data={"name": "copy"})
    assert copy.status_code == 201 and copy.json()["bank"]["name"] == "copy"
    again = host.client.post(f"{V}/banks/import", files={"file": ("c.zip", archive)}, data={"name": "copy"})
    assert again.status_code == 409
    over = host.client.post(f"{V}/banks/import", files={"file": ("c.zip", archive)},
                            data={"name": "copy", "overwrite": "true"})
    assert over.status_code == 201
    no_name = host.client.post(f"{V}/banks/import", files={"file": ("c.zip", archive)}, data={"overwrite": "true"})
    assert no_name.status_code == 422 and "give 'name'" in no_name.json()["detail"]
    taken = host.client.post(f"{V}/banks/import", files={"file": ("c.zip", archive)})
    assert taken.status_code == 422 and "already exists" in taken.json()["detail"]


def test_export_latents_only_imports_as_a_bank_without_images(host):
    host.bank("cats")
    host.client.post(f"{V}/banks/cats/encode", json={"width": 64, "height": 64})
    archive = host.client.get(f"{V}/banks/cats/export", params={"latents": "only"}).content
    r = host.client.post(f"{V}/banks/import", files={"file": ("x.zip", archive)}, data={"name": "lat"})
    assert r.status_code == 201 and r.json()["bank"]["has_images"] is False
    assert host.client.get(f"{V}/banks/lat").json()["caches"][0]["carried"] is True


def test_export_and_import_errors(host):
    host.bank("cats")
    r = host.client.get(f"{V}/banks/cats/export", params={"latents": "some"})
    assert r.status_code == 422 and "some" in r.json()["detail"]
    assert host.client.get(f"{V}/banks/ghost/export").status_code == 404
    before = host.snapshot()
    for data in (b"not a zip", zip_of({"readme.txt": b"hi"})):
        r = host.client.post(f"{V}/banks/import", files={"file": ("x.zip", data)}, data={"name": "new"})
        assert r.status_code == 422 and r.json()["detail"], r.json()
    assert host.client.post(f"{V}/banks/import").status_code == 422
    assert host.snapshot() == before


def test_folder_import(host, tmp_path):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    for s in (1, 2):
        (folder / f"{s}.png").write_bytes(png(s))
    (folder / "sub" / "3.png").write_bytes(png(3))
    (folder / "notes.txt").write_text("hello")
    r = host.client.post(f"{V}/banks/pics/folder", json={"folder": str(folder), "recursive": True,
                                                         "description": "from disk"})
    assert r.status_code == 201, r.json()
    assert r.json()["report"]["added"] == ["1.png", "2.png", "sub/3.png"]
    assert [s["name"] for s in r.json()["report"]["skipped"]] == ["notes.txt"]
    assert r.json()["bank"]["description"] == "from disk"
    for body, status in [({"folder": str(folder)}, 409), ({"folder": str(tmp_path / "nowhere")}, 422)]:
        r = host.client.post(f"{V}/banks/{'pics' if status == 409 else 'other'}/folder", json=body)
        assert r.status_code == status and r.json()["detail"]
    host.configure(folder_import=False)
    r = host.client.post(f"{V}/banks/other/folder", json={"folder": str(folder)})
    assert r.status_code == 403 and "switched off" in r.json()["detail"]
    assert host.store.names() == ["pics"]


# ---------------------------------------------------------------------------------------- limits
def test_oversized_bodies_are_refused_with_413(host):
    host.bank("cats", seeds=(1,))
    host.configure(limits=InputLimits(max_total_bytes=100_000, max_file_bytes=100_000))
    before = host.snapshot()
    big = bytes(range(256)) * (8 * 1024)  # 2 MiB, more than the images' limit plus room for the JSON around them
    cases = [
        ("POST", f"{V}/banks", {"json": {"name": "big", "images": [item("big.png", big)]}}),
        ("POST", f"{V}/banks/cats/images", {"json": {"images": [item("big.png", big)]}}),
        ("POST", f"{V}/banks/cats/images/upload", {"files": [("files", ("big.png", big))]}),
        ("POST", f"{V}/banks/import", {"files": {"file": ("big.zip", big)}}),
        ("PATCH", f"{V}/banks/cats", {"json": {"description": "x" * (2 * MIB)}}),
        ("POST", f"{V}/banks/cats/images", {"content": iter([b'{"images": [', b" " * (3 * MIB), b"]}"])}),
    ]
    for method, path, kwargs in cases:
        r = host.client.request(method, path, **kwargs)
        assert r.status_code == 413 and "larger than" in r.json()["detail"], (path, r.json())
    assert host.snapshot() == before


# ---------------------------------------------------------------------------------------- names
BAD_NAMES = ["..", "../x", "..\\x", "/etc/passwd", "C:\\Windows", "a\x00b", "CON", "nul.txt", "x" * 10_000,
             ".hidden", " ", "a/b"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=lambda n: repr(n[:12]))
def test_bad_names_are_refused_on_every_route(host, tmp_path, bad):
    host.bank("cats")
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "1.png").write_bytes(png(1))
    before = host.snapshot()
    bodies = {"PATCH": {"description": "x"}, "POST": {"images": [item("a.png", png(5))], "sha256": ["0" * 64],
                                                     "folder": str(folder), "width": 64, "height": 64}}
    for method, template in NAMED_ROUTES:
        kwargs = {"json": bodies[method]} if method in bodies else {}
        if template.endswith("/upload"):
            kwargs = {"files": [("files", ("a.png", png(5)))]}
        r = host.client.request(method, url(template, name=bad), **kwargs)
        assert 400 <= r.status_code < 500 and r.json()["detail"], (template, r.status_code)
    for method, path, kwargs in [
        ("POST", f"{V}/banks", {"json": {"name": bad, "images": [item("a.png", png(5))]}}),
        ("PATCH", f"{V}/banks/cats", {"json": {"new_name": bad}}),
        ("POST", f"{V}/banks/import", {"files": {"file": ("c.zip", b"PK")}, "data": {"name": bad}}),
    ]:
        r = host.client.request(method, path, **kwargs)
        assert r.status_code == 422 and "bank name" in r.json()["detail"], (path, r.json())
    assert host.snapshot() == before
    assert sorted(p.name for p in (tmp_path / "store" / "banks").iterdir()) == ["cats"]


# ---------------------------------------------------------------------------------------- auth
def fill(template: str) -> str:
    return url(template, name="cats", job_id="nojob")


@pytest.mark.parametrize("method, template", ROUTES)
def test_every_route_needs_credentials_when_api_auth_is_set(users, method, template):
    users.bank("cats", headers=ALICE)
    before = users.snapshot()
    for headers, word in [({}, "authentication required"), (basic("alice", "wrong"), "incorrect"),
                          (basic("mallory", "a-pw"), "incorrect"), ({"Authorization": "Basic %%%"}, "incorrect"),
                          ({"Authorization": "Bearer abc"}, "incorrect")]:
        r = users.client.request(method, fill(template), headers=headers)
        assert r.status_code == 401 and word in r.json()["detail"], (headers, r.json())
        assert r.headers["www-authenticate"] == "Basic"
    assert users.snapshot() == before
    r = users.client.request(method, fill(template), headers=ALICE)
    assert r.status_code not in (401, 403) and r.status_code < 500, r.json()


def test_credentials_are_checked_before_the_body_is_read(users):
    users.configure(limits=InputLimits(max_total_bytes=1000, max_file_bytes=1000))
    r = users.client.post(f"{V}/banks", content=b"x" * (3 * MIB), headers={"content-type": "application/json"})
    assert r.status_code == 401


def test_with_credentials_everything_works(users):
    r = users.client.post(f"{V}/banks", json={"name": "cats", "images": [item("a.png", png(1))]}, headers=ALICE)
    assert r.status_code == 201 and r.json()["bank"]["owner"] == "alice"
    assert users.client.get(f"{V}/version", headers=ALICE).status_code == 200


def test_a_malformed_api_auth_locks_everyone_out(host):
    host.configure(api_auth="no-colon-here")
    assert host.client.get(f"{V}/banks").status_code == 401
    assert host.client.get(f"{V}/banks", headers=basic("no-colon-here", "")).status_code == 401


def test_users_never_see_or_change_each_others_private_banks(users):
    users.bank("alices", headers=ALICE)
    users.bank("bobs", seeds=(4,), headers=BOB)
    sha = users.client.get(f"{V}/banks/alices", headers=ALICE).json()["images"][0]["sha256"]
    job = users.client.post(f"{V}/banks/alices/encode", json={"wait": False, "width": 64, "height": 64},
                            headers=ALICE).json()
    users.poll(job["job_id"], headers=ALICE)
    before = users.snapshot()

    assert [b["name"] for b in users.client.get(f"{V}/banks", headers=ALICE).json()["banks"]] == ["alices"]
    assert [b["name"] for b in users.client.get(f"{V}/banks", headers=BOB).json()["banks"]] == ["bobs"]
    ghost = users.client.get(f"{V}/banks/ghost", headers=BOB).json()["detail"]
    bodies = {"PATCH": {"description": "mine now"}, "POST": {"images": [item("a.png", png(5))], "sha256": [sha],
                                                            "width": 64, "height": 64, "folder": "/"}}
    for method, template in NAMED_ROUTES:
        if template.endswith("/folder"):
            continue  # creates a bank: not about alice's
        kwargs = {"json": bodies[method]} if method in bodies else {}
        if template.endswith("/upload"):
            kwargs = {"files": [("files", ("a.png", png(5)))]}
        r = users.client.request(method, url(template, name="alices", sha256=sha), headers=BOB, **kwargs)
        assert r.status_code == 404, (template, r.json())
        assert r.json()["detail"].replace("alices", "ghost") == ghost
    assert users.client.get(f"{V}/jobs/{job['job_id']}", headers=BOB).status_code == 404
    r = users.client.post(f"{V}/banks", json={"name": "alices", "images": [item("a.png", png(5))]}, headers=BOB)
    assert r.status_code == 409 and "alice'" not in r.json()["detail"]
    archive = users.client.get(f"{V}/banks/bobs/export", headers=BOB).content
    r = users.client.post(f"{V}/banks/import", files={"file": ("b.zip", archive)},
                          data={"name": "alices", "overwrite": "true"}, headers=BOB)
    assert r.status_code == 409
    assert users.snapshot() == before
    assert users.client.get(f"{V}/jobs/{job['job_id']}", headers=ALICE).json()["status"] == "done"


def test_operators_see_private_banks_but_do_not_change_them(users):
    users.bank("alices", headers=ALICE)
    before = users.snapshot()
    assert [b["name"] for b in users.client.get(f"{V}/banks", headers=CAROL).json()["banks"]] == ["alices"]
    assert users.client.get(f"{V}/banks/alices", headers=CAROL).status_code == 200
    for method, path, kwargs in [("DELETE", f"{V}/banks/alices", {}),
                                 ("PATCH", f"{V}/banks/alices", {"json": {"description": "x"}})]:
        r = users.client.request(method, path, headers=CAROL, **kwargs)
        assert r.status_code == 403 and "belongs to 'alice'" in r.json()["detail"]
    assert users.snapshot() == before


def test_shared_banks_are_made_and_managed_by_operators_only(users, tmp_path):
    before = users.snapshot()
    body = {"name": "common", "shared": True, "images": [item("a.png", png(1))]}
    r = users.client.post(f"{V}/banks", json=body, headers=BOB)
    assert r.status_code == 403 and "only operators may create shared banks" in r.json()["detail"]
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "1.png").write_bytes(png(1))
    r = users.client.post(f"{V}/banks/fromdisk/folder", json={"folder": str(folder)}, headers=BOB)
    assert r.status_code == 403 and "only operators" in r.json()["detail"]
    assert users.snapshot() == before

    r = users.client.post(f"{V}/banks", json=body, headers=CAROL)
    assert r.status_code == 201 and r.json()["bank"]["owner"] is None
    assert [b["name"] for b in users.client.get(f"{V}/banks", headers=BOB).json()["banks"]] == ["common"]
    shared_state = users.snapshot()
    for method, path, kwargs in [("PATCH", f"{V}/banks/common", {"json": {"description": "x"}}),
                                 ("DELETE", f"{V}/banks/common", {}),
                                 ("POST", f"{V}/banks/common/images", {"json": {"images": [item("b.png", png(2))]}})]:
        r = users.client.request(method, path, headers=BOB, **kwargs)
        assert r.status_code == 403 and "only operators may change the shared bank" in r.json()["detail"]
    assert users.snapshot() == shared_state
    assert users.client.patch(f"{V}/banks/common", json={"description": "x"}, headers=CAROL).status_code == 200
    r = users.client.post(f"{V}/banks/fromdisk/folder", json={"folder": str(folder)}, headers=CAROL)
    assert r.status_code == 201 and r.json()["bank"]["owner"] == "carol"


def test_anonymous_callers_are_read_only_when_the_ui_has_users(host):
    host.bank("common")
    host.configure(other_users=True)
    assert [b["name"] for b in host.client.get(f"{V}/banks").json()["banks"]] == ["common"]
    r = host.client.post(f"{V}/banks", json={"name": "mine", "images": [item("a.png", png(1))]})
    assert r.status_code == 403 and host.store.names() == ["common"]
    assert host.client.delete(f"{V}/banks/common").status_code == 403


# ---------------------------------------------------------------------------------------- mounted in the WebUI
@pytest.fixture
def webui(glue, monkeypatch):
    """A FastAPI app as ``--nowebui`` starts it (demo None), with the extension's app_started callbacks."""
    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    script_callbacks.app_started_callback(None, app)  # mounted once
    client = TestClient(app)
    made: list[str] = []
    yield client, made
    for name in made:
        if glue.STORE.exists(name):
            glue.STORE.delete(name)


def test_mounted_once_by_the_app_started_callback(webui):
    client, _ = webui
    mounted = [r for r in client.app.routes if getattr(r, "path", "").startswith(V + "/")]
    assert sorted((m, r.path[len(V):]) for r in mounted for m in r.methods) == sorted(ROUTES + POLICY_ROUTES)
    assert client.get(f"{V}/version").json()["version"] == lib_safe_denoiser.__version__


def test_webui_auth_and_operators_come_from_its_flags(webui, monkeypatch, glue):
    client, made = webui
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:a-pw,bob:b-pw")
    monkeypatch.setattr(shared.cmd_opts, "safe_denoiser_operators", "alice")
    assert client.get(f"{V}/banks").status_code == 401
    assert client.get(f"{V}/banks", headers=basic("alice", "nope")).status_code == 401
    made.append("routes-glue-shared")
    body = {"name": "routes-glue-shared", "shared": True, "images": [item("a.png", png(1))]}
    assert client.post(f"{V}/banks", json=body, headers=BOB).status_code == 403
    assert not glue.STORE.exists("routes-glue-shared")
    r = client.post(f"{V}/banks", json=body, headers=basic("alice", "a-pw"))
    assert r.status_code == 201 and r.json()["bank"]["owner"] is None


def test_webui_gradio_auth_makes_the_anonymous_api_caller_no_operator(webui, monkeypatch):
    client, _ = webui
    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", "alice:a-pw")
    r = client.post(f"{V}/banks", json={"name": "routes-glue-anon", "images": [item("a.png", png(1))]})
    assert r.status_code == 403


def test_webui_settings_bound_uploads_and_folder_import(webui, monkeypatch, tmp_path):
    client, made = webui
    monkeypatch.setitem(shared.opts.data, options.OPT_UPLOAD_MAX_MB, 1)
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB
    r = client.post(f"{V}/banks", json={"name": "routes-glue-big", "images": [item("b.png", big)]})
    assert r.status_code == 413
    monkeypatch.setitem(shared.opts.data, options.OPT_FOLDER_IMPORT, "nobody")
    (tmp_path / "1.png").write_bytes(png(1))
    made.append("routes-glue-folder")
    r = client.post(f"{V}/banks/routes-glue-folder/folder", json={"folder": str(tmp_path)})
    assert r.status_code == 403 and "switched off" in r.json()["detail"]
    monkeypatch.setitem(shared.opts.data, options.OPT_FOLDER_IMPORT, "operators")
    r = client.post(f"{V}/banks/routes-glue-folder/folder", json={"folder": str(tmp_path)})
    assert r.status_code == 201 and r.json()["bank"]["owner"] is None  # the local user is an operator


def test_webui_encodes_with_the_loaded_model_waiting_and_as_a_job(webui, monkeypatch, glue):
    client, made = webui
    made.append("routes-glue-enc")
    client.post(f"{V}/banks", json={"name": "routes-glue-enc", "images": [item(f"{s}.png", png(s)) for s in (1, 2)]})
    monkeypatch.setattr(shared, "sd_model", harness.TinyModel())
    r = client.post(f"{V}/banks/routes-glue-enc/encode", json={"width": 64, "height": 64})
    assert r.status_code == 200, r.json()
    cache = r.json()["cache"]
    assert cache["vae_id"] == "sd1-ckpt-tiny0001" and cache["latent_hw"] == [8, 8] and cache["n_images"] == 2
    assert cache["bytes"] > 0 and shared.sd_model.first_stage_model.calls == 2
    job = client.post(f"{V}/banks/routes-glue-enc/encode", json={"width": 128, "height": 64, "wait": False}).json()
    deadline = time.monotonic() + WAIT_S
    while (status := client.get(f"{V}/jobs/{job['job_id']}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert status["status"] == "done" and status["cache"]["latent_hw"] == [8, 16]
    assert len(glue.STORE.cache_status("routes-glue-enc")) == 2
    monkeypatch.setattr(shared, "sd_model", None)
    r = client.post(f"{V}/banks/routes-glue-enc/encode", json={"width": 64, "height": 192})
    assert r.status_code == 409 and r.json()["detail"] == "no model is loaded"
