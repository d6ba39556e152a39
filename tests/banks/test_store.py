"""The bank store on real files: layout, manifests (v1 and v2), every operation and its errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from lib_safe_denoiser.banks.manifest import MANIFEST_VERSION
from lib_safe_denoiser.banks.store import (
    IN_FLIGHT_MIN_AGE_S,
    AddReport,
    BankInfo,
    BankStore,
    content_hash_of,
    validate_bank_name,
)
from lib_safe_denoiser.errors import BankError, BankNotFoundError, SafeDenoiserError
from tests.banks.store_helpers import CountingEncoder, all_files, make_images, noise_image, write_image


@pytest.fixture
def store(tmp_path) -> BankStore:
    return BankStore(tmp_path / "data" / "safe_denoiser")


def sha_of(store: BankStore, bank: str, index: int) -> str:
    return store.image_entries(bank)[index]["sha256"]


# ---- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nudity-v1", "My bank 2", "a.b_c", "X", "a" * 64])
def test_valid_names(name):
    assert validate_bank_name(name) == name


BAD_NAMES = [
    "", "   ", "..", ".", "../x", "a/b", "a\\b", "/abs/path", "C:\\x", ".hidden", "a" * 65, "a" * 10_000,
    "a\nb", "tab\tx", "nul\x00byte", "nul", "CON", "COM1", "trailing ", " leading", "dot.", "caf\u00e9", "a:b",
    "a*b", None, 3,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:20])
def test_bad_names_are_rejected_with_a_message(name):
    with pytest.raises(BankError) as err:
        validate_bank_name(name)
    assert str(err.value) and len(str(err.value)) < 300  # a 10,000-character name is not echoed whole


def _name_calls(store: BankStore, img: Path, archive: Path) -> dict:
    enc = CountingEncoder()
    sha = "0" * 64
    return {
        "get": lambda n: store.get(n),
        "exists": lambda n: store.exists(n),
        "image_entries": lambda n: store.image_entries(n),
        "image_paths": lambda n: store.image_paths(n),
        "image_path": lambda n: store.image_path(n, sha),
        "thumbnail": lambda n: store.thumbnail(n, sha),
        "near_duplicates": lambda n: store.near_duplicates(n),
        "create": lambda n: store.create(n, [img]),
        "add_folder": lambda n: store.add_folder(n, img.parent),
        "add_images": lambda n: store.add_images(n, [img]),
        "update": lambda n: store.update(n, description="x"),
        "rename_from": lambda n: store.rename(n, "fine"),
        "rename_to": lambda n: store.rename("good", n),
        "remove_images": lambda n: store.remove_images(n, [sha]),
        "delete": lambda n: store.delete(n),
        "export_bank": lambda n: store.export_bank(n, archive.parent / "out.zip"),
        "import_bank": lambda n: store.import_bank(archive, name=n),
        "cache_status": lambda n: store.cache_status(n),
        "drop_cache": lambda n: store.drop_cache(n),
        "latents": lambda n: store.latents(n, encoder=enc, vae_id="v", latent_hw=(4, 4)),
        "has_latents": lambda n: store.has_latents(n, "v", (4, 4)),
    }


@pytest.mark.parametrize("name", ["../x", "/abs/path", "nul\x00byte", "CON", "a" * 10_000, "a/b", ".."],
                         ids=["dotdot", "absolute", "NUL", "CON", "10k", "slash", "parent"])
def test_every_method_taking_a_name_refuses_bad_names_and_writes_nothing(store, tmp_path, name):
    img = write_image(tmp_path / "src" / "one.png", 0)
    store.create("good", [img])
    archive = store.export_bank("good", tmp_path / "good.zip")
    before = {p: p.read_bytes() for p in all_files(store.root)}
    outside = sorted(p for p in tmp_path.rglob("*") if store.root not in p.parents)
    for method, call in _name_calls(store, img, archive).items():
        with pytest.raises(BankError) as err:
            call(name)
        assert "bank name" in str(err.value), method
    assert {p: p.read_bytes() for p in all_files(store.root)} == before
    assert sorted(p for p in tmp_path.rglob("*") if store.root not in p.parents) == outside


# ---- create / read -----------------------------------------------------------------------------
def test_create_writes_a_v2_manifest_and_the_documented_layout(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    report = store.create("nudity-v1", imgs, description="test bank", owner="alice", tags="nsfw, v1 ,NSFW",
                          resize="pad")
    assert isinstance(report, AddReport)
    info = report.info
    assert isinstance(info, BankInfo)
    assert (info.name, info.n_images, info.description, info.owner, info.tags, info.resize, info.has_images) == (
        "nudity-v1", 3, "test bank", "alice", ("nsfw", "v1"), "pad", True)
    assert report.added == ("img000.png", "img001.png", "img002.png")
    assert report.duplicates == report.skipped == report.near_duplicates == ()
    assert len(info.content_hash) == 64 and info.short_hash == info.content_hash[:10]
    assert store.get("nudity-v1") == info and store.exists("nudity-v1") and not store.exists("other")
    assert store.names() == ["nudity-v1"] and store.list() == [info]
    assert json.loads(json.dumps(info.as_dict()))["tags"] == ["nsfw", "v1"]
    assert info.as_dict()["short_hash"] == info.short_hash

    manifest = json.loads((store.root / "banks" / "nudity-v1" / "manifest.json").read_text())
    assert manifest["version"] == MANIFEST_VERSION == 2
    assert manifest["owner"] == "alice" and manifest["resize"] == "pad" and manifest["has_images"] is True
    assert manifest["content_hash"] == info.content_hash and manifest["created"] == manifest["updated"]
    for entry, src in zip(manifest["images"], imgs, strict=True):
        assert entry["file"] == f"{entry['sha256']}.png" and entry["source_name"] == src.name
        assert entry["added"] == info.created and len(entry["phash"]) == 16
        assert (store.root / "images" / entry["file"]).read_bytes() == src.read_bytes()  # kept as given
    assert store.image_entries("nudity-v1")[0].keys() == {"sha256", "file", "source_name", "added"}
    assert store.image_paths("nudity-v1") == [store.root / "images" / e["file"] for e in manifest["images"]]


def test_content_hash_is_order_independent_and_bank_order_is_kept(store, tmp_path):
    imgs = make_images(tmp_path / "src", 4)
    a = store.create("a", imgs).info
    b = store.create("b", list(reversed(imgs))).info
    assert a.content_hash == b.content_hash == content_hash_of([e["sha256"] for e in store.image_entries("a")])
    assert store.image_paths("b") == list(reversed(store.image_paths("a")))
    assert store.create("c", imgs[:3]).info.content_hash != a.content_hash


def test_duplicates_are_reported_and_stored_once(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    copy = tmp_path / "copy-of-0.png"
    copy.write_bytes(imgs[0].read_bytes())
    report = store.create("a", [imgs[0], copy, imgs[1], imgs[0]])
    assert report.info.n_images == 2 and report.added == ("img000.png", "img001.png")
    assert report.duplicates == ("copy-of-0.png", "img000.png")
    store.create("b", [imgs[1], imgs[2]])
    assert len(list((store.root / "images").iterdir())) == 3  # the shared image is stored once

    before = store.get("a")
    appended = store.add_images("a", [copy, imgs[2], imgs[2]])
    assert appended.added == ("img002.png",) and appended.duplicates == ("img002.png", "copy-of-0.png")
    assert appended.info.n_images == 3 and appended.info.created == before.created
    assert [e["source_name"] for e in store.image_entries("a")] == ["img000.png", "img001.png", "img002.png"]
    again = store.add_images("a", [imgs[1]])
    assert again.added == () and again.duplicates == ("img001.png",) and again.info == appended.info
    assert again.summary() == "Added 0 images to 'a' (now 3); 1 duplicate left out"


def test_other_inputs_bytes_pil_and_named_bytes(store):
    buf = io.BytesIO()
    noise_image(1).save(buf, format="JPEG")
    webp = io.BytesIO()
    noise_image(3).save(webp, format="WEBP")
    report = store.create("mixed", [buf.getvalue(), noise_image(2), ("upload.webp", webp.getvalue())])
    assert report.info.n_images == 3
    entries = store.image_entries("mixed")
    assert [e["file"].rsplit(".", 1)[1] for e in entries] == ["jpg", "png", "webp"]
    assert entries[2]["source_name"] == "upload.webp"


def test_bad_files_are_skipped_and_reported_while_good_ones_proceed(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    cut = tmp_path / "cut.png"
    cut.write_bytes(imgs[0].read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    report = store.create("b", [imgs[0], cut, imgs[1], text, tmp_path / "missing.png"])
    assert report.added == ("img000.png", "img001.png") and report.info.n_images == 2
    assert [s.name for s in report.skipped] == [str(cut), str(text), str(tmp_path / "missing.png")]
    assert all(s.reason for s in report.skipped)
    summary = report.summary()
    assert summary.startswith("Added 2 images to 'b' (now 2); skipped 3: ") and "cut.png (" in summary
    data = report.as_dict()
    assert json.loads(json.dumps(data))["skipped"][0]["name"] == str(cut) and data["summary"] == summary

    appended = store.add_images("b", [cut, imgs[2]])
    assert appended.added == ("img002.png",) and [s.name for s in appended.skipped] == [str(cut)]


def test_all_bad_files_is_an_error_listing_each_and_writes_nothing(store, tmp_path):
    imgs = make_images(tmp_path / "src", 2)
    info = store.create("keep", imgs).info
    files = {p: p.read_bytes() for p in all_files(store.root)}
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    both = [garbage, tmp_path / "missing.png"]
    for call in (lambda: store.create("new", both), lambda: store.create("keep", both, overwrite=True),
                 lambda: store.add_images("keep", both)):
        with pytest.raises(BankError, match=r"none of the 2 .* nothing was saved: .*garbage\.jpg: .*missing\.png"):
            call()
    with pytest.raises(BankError, match="no images given"):
        store.create("new", [])
    assert {p: p.read_bytes() for p in all_files(store.root)} == files
    assert store.get("keep") == info and store.names() == ["keep"]


def test_summary_names_a_few_and_counts_the_rest(store, tmp_path):
    bad = []
    for i in range(8):
        p = tmp_path / f"bad{i}.png"
        p.write_bytes(b"x")
        bad.append(p)
    report = store.create("b", [*bad, *make_images(tmp_path / "src", 1)])
    assert report.summary().endswith("and 3 more") and len(report.skipped) == 8


def test_near_duplicates_are_kept_reported_and_listed(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("b", imgs)
    resaved = tmp_path / "resaved.jpg"
    Image.open(imgs[1]).save(resaved, quality=95)  # other bytes, same picture
    report = store.add_images("b", [resaved, write_image(tmp_path / "fresh.png", 99)])
    assert report.added == ("resaved.jpg", "fresh.png") and report.near_duplicates == (("resaved.jpg", "img001.png"),)
    assert "1 near-duplicate kept: resaved.jpg ~ img001.png" in report.summary()
    pairs = store.near_duplicates("b")
    assert [(a, b) for a, b, _ in pairs] == [(sha_of(store, "b", 1), sha_of(store, "b", 3))]
    assert 0 <= pairs[0][2] <= 4
    assert store.near_duplicates("b", max_distance=0) == [p for p in pairs if p[2] == 0]
    for bad in (-1, 65, 2.5, "4", True):
        with pytest.raises(BankError, match="max_distance"):
            store.near_duplicates("b", max_distance=bad)
    inside = store.create("c", [imgs[0], resaved, imgs[1]])  # within one upload too
    assert inside.near_duplicates == (("img001.png", "resaved.jpg"),)


def test_unknown_bank(store, tmp_path):
    store.create("real", make_images(tmp_path / "src", 1))
    calls = _name_calls(store, tmp_path / "src" / "img000.png", tmp_path / "none.zip")
    for method in ("get", "image_entries", "image_paths", "image_path", "thumbnail", "near_duplicates", "add_images",
                   "update", "rename_from", "remove_images", "delete", "export_bank", "cache_status", "drop_cache",
                   "latents", "has_latents"):
        with pytest.raises(BankNotFoundError, match="no bank named 'ghost'.*'real'") as err:
            calls[method]("ghost")
        assert isinstance(err.value, KeyError) and isinstance(err.value, SafeDenoiserError), method
        assert str(err.value).startswith("no bank"), method


def test_empty_store_reads_without_creating_anything(store):
    assert store.names() == [] and store.list() == []
    assert store.gc() == 0
    assert not store.root.exists()


# ---- manifests -------------------------------------------------------------------------------
def write_v1_bank(store: BankStore, name: str, images: list[Path]) -> None:
    """A bank exactly as version 1 of the store wrote it."""
    entries = []
    for p in images:
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        (store.root / "images").mkdir(parents=True, exist_ok=True)
        (store.root / "images" / f"{sha}.png").write_bytes(p.read_bytes())
        entries.append({"sha256": sha, "file": f"{sha}.png", "source_name": p.name})
    manifest = {"version": 1, "name": name, "description": "old", "created": "2024-01-02T03:04:05+00:00",
                "updated": "2024-01-02T03:04:05+00:00", "content_hash": content_hash_of(e["sha256"] for e in entries),
                "images": entries}
    (store.root / "banks" / name).mkdir(parents=True)
    (store.root / "banks" / name / "manifest.json").write_text(json.dumps(manifest))


def test_v1_manifests_are_read_as_they_are_and_upgraded_on_write(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    write_v1_bank(store, "old", imgs[:2])
    info = store.get("old")
    assert (info.owner, info.tags, info.resize, info.has_images, info.description) == (None, (), "crop", True, "old")
    assert info.content_hash == store.create("new", imgs[:2]).info.content_hash
    assert [e["added"] for e in store.image_entries("old")] == [info.created] * 2
    resaved = tmp_path / "again.jpg"
    Image.open(imgs[0]).save(resaved, quality=95)
    report = store.add_images("old", [imgs[2], resaved])
    assert report.near_duplicates == (("again.jpg", "img000.png"),)  # the old images' hashes were computed
    data = json.loads((store.root / "banks" / "old" / "manifest.json").read_text())
    assert data["version"] == 2 and all(len(e["phash"]) == 16 for e in data["images"])
    assert data["created"] == "2024-01-02T03:04:05+00:00" and data["description"] == "old"


def test_manifest_of_a_newer_version_says_so(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 1))
    path = store.root / "banks" / "b" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 99}))
    with pytest.raises(BankError, match="newer version of the extension"):
        store.get("b")


@pytest.mark.parametrize("damage", [
    lambda d: "{not json",
    lambda d: json.dumps({**d, "images": []}),
    lambda d: json.dumps({**d, "content_hash": "0" * 64}),
    lambda d: json.dumps({**d, "resize": "zoom"}),
    lambda d: json.dumps({**d, "has_images": "yes"}),
    lambda d: json.dumps({**d, "tags": ["a,b"]}),
    lambda d: json.dumps({**d, "images": [{**d["images"][0], "file": "../../../etc/passwd"}]}),
    lambda d: json.dumps({**d, "images": [{**d["images"][0], "phash": "zz"}]}),
    lambda d: json.dumps({**d, "images": d["images"] * 2}),
    lambda d: json.dumps({**d, "has_images": False}),
    lambda d: json.dumps([d]),
    lambda d: b"\xff\xfe",
], ids=["json", "empty", "hash", "resize", "has_images", "tags", "path", "phash", "twice", "files-in-latents-only",
        "not-object", "not-utf8"])
def test_damaged_or_tampered_manifest_is_a_bank_error(store, tmp_path, damage):
    imgs = make_images(tmp_path / "src", 2)
    store.create("good", imgs)
    store.create("bad", imgs[:1])
    manifest = store.root / "banks" / "bad" / "manifest.json"
    broken = damage(json.loads(manifest.read_text()))
    manifest.write_bytes(broken if isinstance(broken, bytes) else broken.encode())
    with pytest.raises(BankError, match="bad"):
        store.get("bad")
    assert [i.name for i in store.list()] == ["good"]  # listed banks skip it, with a log line
    assert store.gc(grace_s=0) == 0  # refuses to clean up while a manifest is unreadable
    assert len(list((store.root / "images").iterdir())) == 2
    store.delete("bad")  # what the message advises must work on a damaged bank
    assert store.names() == ["good"]


def test_missing_pool_image_is_reported(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 2))
    store.image_paths("b")[1].unlink()
    with pytest.raises(BankError, match="damaged.*missing"):
        store.image_paths("b")
    with pytest.raises(BankError, match="missing"):
        store.image_path("b", sha_of(store, "b", 1))


# ---- failures keep the old bank ----------------------------------------------------------------
def test_existing_name_needs_overwrite(store, tmp_path):
    first = make_images(tmp_path / "one", 2)
    second = make_images(tmp_path / "two", 1, start=10)
    store.create("bank", first)
    with pytest.raises(BankError, match="already exists"):
        store.create("bank", second)
    with pytest.raises(BankError, match="case-insensitive"):
        store.create("BANK", second, overwrite=True)
    assert store.get("bank").n_images == 2
    replaced = store.create("bank", second, overwrite=True, description="v2").info
    assert replaced.n_images == 1 and store.get("bank") == replaced


def test_failed_manifest_write_keeps_old_bank_and_leaves_no_temp_files(store, tmp_path, monkeypatch):
    store.create("bank", make_images(tmp_path / "one", 2))
    old = store.get("bank")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BankError, match="No space left"):
        store.create("bank", make_images(tmp_path / "two", 1, start=5), overwrite=True)
    with pytest.raises(BankError, match="No space left"):
        store.update("bank", description="new")
    monkeypatch.undo()
    assert store.get("bank") == old
    assert not list(store.root.rglob(".tmp-*"))


def test_invalid_metadata_is_refused_before_anything_is_written(store, tmp_path):
    img = make_images(tmp_path / "src", 1)
    for kwargs, match in (({"resize": "zoom"}, "resize"), ({"tags": ["a,b"]}, "tag"), ({"tags": 5}, "tags"),
                          ({"description": "x" * 3000}, "description"), ({"owner": 3}, "owner")):
        with pytest.raises(BankError, match=match):
            store.create("b", img, **kwargs)
    assert not store.root.exists()


# ---- folders -----------------------------------------------------------------------------------
def test_add_folder_picks_image_types_sorted_reports_others_and_recursive(store, tmp_path):
    src = tmp_path / "folder"
    write_image(src / "b.jpg", 1, fmt="JPEG")
    write_image(src / "a.PNG", 2, fmt="PNG")
    write_image(src / "c.webp", 3, fmt="WEBP")
    write_image(src / "d.bmp", 4, fmt="BMP")
    write_image(src / "sub" / "e.jpeg", 5, fmt="JPEG")
    (src / "notes.txt").write_text("not an image")
    report = store.add_folder("f", src, description="from a folder", tags=["x"])
    assert report.info.n_images == 4 and report.info.description == "from a folder"
    assert [s.name for s in report.skipped] == ["notes.txt"]
    assert [e["source_name"] for e in store.image_entries("f")] == ["a.PNG", "b.jpg", "c.webp", "d.bmp"]
    deep = store.add_folder("f", src, recursive=True, overwrite=True)
    assert deep.info.n_images == 5 and store.image_entries("f")[-1]["source_name"] == "sub/e.jpeg"


def test_add_folder_errors(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(BankError, match="no images"):
        store.add_folder("x", empty)
    with pytest.raises(BankError, match="folder not found"):
        store.add_folder("x", tmp_path / "nope")
    assert not store.root.exists()


# ---- update / rename / remove / delete -------------------------------------------------------
def test_update_changes_only_what_is_given(store, tmp_path):
    info = store.create("b", make_images(tmp_path / "src", 2), description="d", tags=["a"]).info
    assert store.update("b") == info  # nothing to change: not even 'updated'
    new = store.update("b", tags="x, y", resize="stretch")
    assert (new.description, new.tags, new.resize, new.content_hash) == ("d", ("x", "y"), "stretch", info.content_hash)
    assert store.update("b", description="  new\x07 text ").description == "new text"
    assert store.get("b").tags == ("x", "y") and store.get("b").created == info.created
    for kwargs, match in (({"resize": "zoom"}, "resize"), ({"tags": ["#" * 40]}, "tag")):
        with pytest.raises(BankError, match=match):
            store.update("b", **kwargs)


def test_rename_keeps_everything_and_the_cache(store, tmp_path):
    info = store.create("old", make_images(tmp_path / "src", 2), tags=["t"], owner="bob").info
    enc = CountingEncoder()
    lat = store.latents("old", encoder=enc, vae_id="v", latent_hw=(4, 4))
    renamed = store.rename("old", "new")
    assert renamed.name == "new" and store.names() == ["new"]
    assert (renamed.content_hash, renamed.tags, renamed.owner, renamed.created) == (
        info.content_hash, info.tags, info.owner, info.created)
    assert json.loads((store.root / "banks" / "new" / "manifest.json").read_text())["name"] == "new"
    assert store.latents("new", encoder=enc, vae_id="v", latent_hw=(4, 4)).equal(lat) and enc.calls == 1
    assert store.rename("new", "NEW").name == "NEW" and store.names() == ["NEW"]  # a change of case only
    assert store.rename("NEW", "NEW") == store.get("NEW")
    store.create("other", make_images(tmp_path / "more", 1, start=5))
    with pytest.raises(BankError, match="already exists"):
        store.rename("NEW", "Other")
    with pytest.raises(BankNotFoundError):
        store.rename("old", "x")


def test_rename_replaces_leftovers_of_an_interrupted_write(store, tmp_path):
    store.create("a", make_images(tmp_path / "src", 1))
    leftover = store.root / "banks" / "b"
    leftover.mkdir()
    (leftover / ".tmp-xyz.part").write_bytes(b"half")
    assert store.rename("a", "b").name == "b" and store.names() == ["b"]
    assert not (store.root / "banks" / "b" / ".tmp-xyz.part").exists()


def test_remove_images(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 3))
    shas = [e["sha256"] for e in store.image_entries("b")]
    info = store.remove_images("b", [shas[1]])
    assert info.n_images == 2 and [e["sha256"] for e in store.image_entries("b")] == [shas[0], shas[2]]
    assert info.content_hash == content_hash_of([shas[0], shas[2]])
    with pytest.raises(BankError, match="has no image"):
        store.remove_images("b", [shas[1], shas[2]])
    assert store.get("b").n_images == 2  # nothing removed
    with pytest.raises(BankError, match="not an image hash"):
        store.remove_images("b", ["abc"])
    with pytest.raises(BankError, match="no images to remove"):
        store.remove_images("b", [])
    with pytest.raises(BankError, match="delete the bank instead"):
        store.remove_images("b", [shas[0], shas[2]])
    assert store.remove_images("b", shas[2]).n_images == 1  # one hash as a plain string


def test_delete_keeps_shared_images_and_gc_frees_the_rest(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("a", imgs[:2])
    store.create("b", imgs[1:])
    store.latents("a", encoder=CountingEncoder(), vae_id="vae", latent_hw=(4, 4))
    store.thumbnail("a", sha_of(store, "a", 0))
    store.delete("a")
    assert store.names() == ["b"] and not (store.root / "banks" / "a").exists()
    store.image_paths("b")  # its images are all still there
    assert list((store.root / "cache").iterdir()) == []  # "a"'s latent cache went at once
    assert len(list((store.root / "images").iterdir())) == 3  # its fresh image waits for the grace period
    assert store.gc(grace_s=0) == 2  # the image and its thumbnail
    assert sorted((store.root / "images").iterdir()) == sorted(store.image_paths("b"))
    assert list((store.root / "thumbs").iterdir()) == []


def test_gc_sweeps_leftovers_of_interrupted_writes_after_the_grace_period(store, tmp_path):
    store.create("a", make_images(tmp_path / "src", 1))
    half = store.root / "banks" / "half"  # a create that died before its manifest
    (half / "latents").mkdir(parents=True)
    (half / "latents" / "x.safetensors").write_bytes(b"x")
    temps = [store.root / "images" / ".tmp-a.part", store.root / "banks" / "a" / ".tmp-b.part"]
    for t in temps:
        t.write_bytes(b"half")
    assert store.gc(grace_s=0) == 0  # writes in progress, maybe of another process: kept whatever the grace
    assert half.exists() and all(t.exists() for t in temps)
    old = time.time() - IN_FLIGHT_MIN_AGE_S - 1
    for p in [half, *half.rglob("*"), *temps]:
        os.utime(p, (old, old))
    assert store.gc(grace_s=0) == 3
    assert not half.exists() and not any(t.exists() for t in temps) and store.names() == ["a"]


def test_recent_orphans_survive_gc_grace(store, tmp_path):
    store.create("a", make_images(tmp_path / "src", 1))
    store.delete("a")  # runs gc with the default grace: the fresh file might belong to another process
    assert len(list((store.root / "images").iterdir())) == 1
    assert store.gc(grace_s=0) == 1


# ---- images: paths, thumbnails -----------------------------------------------------------------
def test_image_path_and_thumbnail(store, tmp_path):
    imgs = [write_image(tmp_path / "big.png", 1, size=(300, 200)), write_image(tmp_path / "small.png", 2)]
    store.create("b", imgs)
    sha = sha_of(store, "b", 0)
    assert store.image_path("b", sha).read_bytes() == imgs[0].read_bytes()
    png = store.thumbnail("b", sha)
    thumb = Image.open(io.BytesIO(png))
    assert thumb.format == "PNG" and max(thumb.size) == 128 and thumb.size[0] > thumb.size[1]
    cached = store.root / "thumbs" / f"{sha}.png"
    assert cached.read_bytes() == png
    assert store.thumbnail("b", sha) == png  # served from the file
    assert not list(store.root.rglob(".tmp-*"))
    for bad in ("0" * 64, "nope", None):
        with pytest.raises(BankError, match="has no image"):
            store.image_path("b", bad)
        with pytest.raises(BankError, match="has no image"):
            store.thumbnail("b", bad)
