"""Bank archives: export/import round trips (with, without and only latents) and tampered archives."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from lib_safe_denoiser.banks.archive import ARCHIVE_FORMAT
from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.errors import BankError
from tests.banks.store_helpers import CountingEncoder, all_files, make_images

HW = (4, 4)


@pytest.fixture
def store(tmp_path) -> BankStore:
    return BankStore(tmp_path / "data" / "safe_denoiser")


@pytest.fixture
def other(tmp_path) -> BankStore:
    """Another WebUI's store (another machine)."""
    return BankStore(tmp_path / "other" / "safe_denoiser")


def made_bank(store: BankStore, tmp_path: Path, name: str = "b", n: int = 3, encode: bool = True):
    """A bank with every kind of metadata, and (``encode``) one cached latent file; returns its latents."""
    store.create(name, make_images(tmp_path / f"src-{name}", n), description="desc", tags=["t1", "t2"],
                 owner="alice", resize="pad")
    return store.latents(name, encoder=CountingEncoder(), vae_id="sd15", latent_hw=HW) if encode else None


def members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist())


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy an archive member by member; ``change(name, data)`` returns new data, or None to drop it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def edit_manifest(change):
    def edit(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        change(manifest)
        return json.dumps(manifest).encode()

    return edit


def test_round_trip_with_latents_to_another_store(store, other, tmp_path):
    lat = made_bank(store, tmp_path)
    path = store.export_bank("b", tmp_path / "b.zip")
    assert path == tmp_path / "b.zip" and not list(tmp_path.glob(".tmp-*"))
    names = members(path)
    assert names == sorted(["manifest.json", "latents/sd15/4x4.pad.safetensors",
                            *(f"images/{e['file']}" for e in store.image_entries("b"))])
    info = other.import_bank(path, owner="carol")
    src = store.get("b")
    assert (info.name, info.content_hash, info.n_images, info.created, info.description, info.tags, info.resize) == (
        src.name, src.content_hash, src.n_images, src.created, src.description, src.tags, src.resize)
    assert info.owner == "carol" and info.has_images  # the archive's owner is not imported
    assert [e["sha256"] for e in other.image_entries("b")] == [e["sha256"] for e in store.image_entries("b")]
    for a, b in zip(store.image_paths("b"), other.image_paths("b"), strict=True):
        assert a.read_bytes() == b.read_bytes()
    enc = CountingEncoder()
    assert torch.equal(other.latents("b", encoder=enc, vae_id="sd15", latent_hw=HW), lat) and enc.calls == 0
    data = json.loads((other.root / "banks" / "b" / "manifest.json").read_text())
    assert all(len(e["phash"]) == 16 for e in data["images"]) and "archive" not in data


def test_export_without_latents_to_a_folder_and_import_from_bytes_under_a_new_name(store, tmp_path):
    made_bank(store, tmp_path)
    path = store.export_bank("b", tmp_path, latents="none")
    assert path == tmp_path / "b.zip" and not any(n.startswith("latents/") for n in members(path))
    info = store.import_bank(path.read_bytes(), name="copy")
    assert info.name == "copy" and info.content_hash == store.get("b").content_hash and info.owner is None
    assert store.names() == ["b", "copy"] and len(list((store.root / "images").iterdir())) == 3  # shared pool


def test_latents_only_round_trip_and_re_export(store, other, tmp_path):
    lat = made_bank(store, tmp_path)
    path = store.export_bank("b", tmp_path / "only.zip", latents="only")
    assert not any(n.startswith("images/") for n in members(path))
    info = other.import_bank(path)
    assert info.has_images is False and info.content_hash == store.get("b").content_hash
    assert not (other.root / "images").exists()
    again = other.export_bank("b", tmp_path / "again.zip", latents="only")
    third = BankStore(tmp_path / "third")
    enc = CountingEncoder()
    assert torch.equal(third.latents(third.import_bank(again).name, encoder=enc, vae_id="sd15", latent_hw=HW), lat)
    for mode in ("none", "include"):
        with pytest.raises(BankError, match="latents='only'"):
            other.export_bank("b", tmp_path / "x.zip", latents=mode)


def test_export_errors(store, tmp_path):
    made_bank(store, tmp_path, encode=False)
    with pytest.raises(BankError, match="no cached latents"):
        store.export_bank("b", tmp_path / "x.zip", latents="only")
    with pytest.raises(BankError, match="latents must be one of"):
        store.export_bank("b", tmp_path / "x.zip", latents="all")
    store.image_paths("b")[0].unlink()
    with pytest.raises(BankError, match="missing"):
        store.export_bank("b", tmp_path / "x.zip", latents="none")
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".tmp-*"))


def test_damaged_cache_files_are_left_out_of_an_export(store, tmp_path):
    made_bank(store, tmp_path)
    next((store.root / "cache").rglob("*.safetensors")).write_bytes(b"broken")
    assert not any(n.startswith("latents/") for n in members(store.export_bank("b", tmp_path / "x.zip")))


def test_name_clashes_need_overwrite(store, tmp_path):
    made_bank(store, tmp_path)
    path = store.export_bank("b", tmp_path / "b.zip")
    made_bank(store, tmp_path, name="B2", n=1)
    with pytest.raises(BankError, match="already exists"):
        store.import_bank(path)
    with pytest.raises(BankError, match="case-insensitive"):
        store.import_bank(path, name="b2", overwrite=True)
    replaced = store.import_bank(path, name="B2", overwrite=True)
    assert replaced.n_images == 3 and store.get("B2") == replaced
    with pytest.raises(BankError, match="bank name"):
        store.import_bank(path, name="../evil")


def _bomb(tmp_path: Path, path: Path) -> Path:
    out = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.startswith("images/"):
                data = b"\0" * (40 << 20)  # 40 MiB of zeros: deflates about 1000:1
            zout.writestr(info.filename, data)
    return out


def _latent_change(meta_change: dict | None = None, shape: tuple | None = None):
    def change(name, data):
        if not name.startswith("latents/"):
            return data
        header_len = int.from_bytes(data[:8], "little")
        meta = {**json.loads(data[8 : 8 + header_len])["__metadata__"], **(meta_change or {})}
        lat = safetensors_load(data)["latents"] if shape is None else torch.zeros(shape)
        return safetensors_save({"latents": lat}, metadata=meta)

    return change


def _drop_first_image():
    dropped: list[str] = []

    def change(name, data):
        if name.startswith("images/") and not dropped:
            dropped.append(name)
            return None
        return data

    return change


def _flip_last_byte_of_images(name, data):
    return data[:-1] + bytes([data[-1] ^ 1]) if name.startswith("images/") else data


TAMPERINGS = {  # kind: (a maker of the change, what the error says)
    "image bytes": (lambda: _flip_last_byte_of_images, "sha256"),
    "missing image": (_drop_first_image, "lacks"),
    "extra member": (lambda: lambda n, d: d, "does not list"),
    "content hash": (lambda: edit_manifest(lambda m: m.update(content_hash="0" * 64)), "content hash"),
    "bad json": (lambda: lambda n, d: b"{nope" if n == "manifest.json" else d, "not valid JSON"),
    "no marker": (lambda: edit_manifest(lambda m: m.pop("archive")), "marker"),
    "future version": (lambda: edit_manifest(lambda m: m["archive"].update(version=9)), "version 9"),
    "latent of other bank": (lambda: _latent_change({"content_hash": "1" * 64}), "belongs to other latents"),
    "latent shape": (lambda: _latent_change(shape=(2, 4, 4, 4)), "shape"),
    "latent list": (lambda: edit_manifest(lambda m: m["latents"][0].update(latent_hw=[5, 5])), "not match its key"),
}


@pytest.mark.parametrize("kind", list(TAMPERINGS))
def test_tampered_archives_are_refused_and_change_nothing(store, other, tmp_path, kind):
    made_bank(store, tmp_path)
    path = store.export_bank("b", tmp_path / "b.zip")
    make_change, match = TAMPERINGS[kind]
    bad = rewrite(path, tmp_path / "bad.zip", make_change())
    if kind == "extra member":
        with zipfile.ZipFile(bad, "a") as zf:
            zf.writestr("images/" + "f" * 64 + ".png", b"x")
    made_bank(other, tmp_path, name="keep", n=1, encode=False)
    before = {p: p.read_bytes() for p in all_files(other.root)}
    with pytest.raises(BankError, match=match):
        other.import_bank(bad)
    assert {p: p.read_bytes() for p in all_files(other.root)} == before and other.names() == ["keep"]


@pytest.mark.parametrize("member", ["../evil.png", "/etc/passwd", "images/../../x.png", "C:\\evil.png", "notes.txt",
                                    "images/short.png"])
def test_unexpected_or_unsafe_member_names_are_refused(store, tmp_path, member):
    made_bank(store, tmp_path, encode=False)
    path = store.export_bank("b", tmp_path / "b.zip", latents="none")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(BankError, match="unexpected or unsafe member"):
        BankStore(tmp_path / "fresh").import_bank(path)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "fresh").exists()


def test_zip_bombs_and_duplicates_are_refused(store, tmp_path):
    made_bank(store, tmp_path, encode=False)
    path = store.export_bank("b", tmp_path / "b.zip", latents="none")
    with pytest.raises(BankError, match="zip bomb"):
        store.import_bank(_bomb(tmp_path, path), name="c")
    dup = rewrite(path, tmp_path / "dup.zip", lambda n, d: d)
    with zipfile.ZipFile(dup, "a") as zf, pytest.warns(UserWarning):
        zf.writestr("manifest.json", b"{}")
    with pytest.raises(BankError, match="twice"):
        store.import_bank(dup, name="c")
    assert store.names() == ["b"]


def test_files_that_are_not_bank_archives(store, tmp_path):
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(BankError, match="not a bank archive"):
        store.import_bank(tmp_path / "text.zip")
    with pytest.raises(BankError, match="not a bank archive"):
        store.import_bank(b"\x89PNG not a zip")
    with pytest.raises(BankError, match="archive not found"):
        store.import_bank(tmp_path / "missing.zip")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"name": "x", "images": []}))
    with pytest.raises(BankError, match="marker"):
        store.import_bank(plain)
    with zipfile.ZipFile(tmp_path / "nomanifest.zip", "w") as zf:
        zf.writestr("images/" + "a" * 64 + ".png", b"x")
    with pytest.raises(BankError, match="no manifest.json"):
        store.import_bank(tmp_path / "nomanifest.zip")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"archive": {"format": ARCHIVE_FORMAT, "version": 1}, "name": "x",
                                                 "images": []}))
    with pytest.raises(BankError, match="damaged"):
        store.import_bank(empty)
    assert not store.root.exists()
