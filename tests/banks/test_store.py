"""The bank store on real files: layout, hashing, validation, atomicity, latent cache."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_safe_denoiser.banks.encode import image_to_tensor01, load_image
from lib_safe_denoiser.banks.files import atomic_copy, sha256_file
from lib_safe_denoiser.banks.store import BankInfo, BankStore, content_hash_of, validate_bank_name
from lib_safe_denoiser.errors import BankError, BankNotFoundError, SafeDenoiserError


class CountingEncoder(torch.nn.Module):
    """A tiny real encoder (8x average pooling, fixed 1x1 conv to 4 channels) that counts its work."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(8)
        self.proj = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1.0, 1.0, 12).reshape(4, 3, 1, 1))
            self.proj.bias.fill_(0.1)
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.proj(self.pool(x)) * 0.18215


def write_image(path: Path, seed: int, size=(40, 32), fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [write_image(folder / f"img{start + i:02d}.png", start + i) for i in range(n)]


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def store(tmp_path) -> BankStore:
    return BankStore(tmp_path / "data" / "safe_denoiser")


# ---- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nudity-v1", "My bank 2", "a.b_c", "X", "a" * 64])
def test_valid_names(name):
    assert validate_bank_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "..",
        ".",
        "../x",
        "a/b",
        "a\\b",
        ".hidden",
        "a" * 65,
        "a\nb",
        "tab\tx",
        "nul",
        "COM1",
        "trailing ",
        " leading",
        "dot.",
        "caf\u00e9",
        "a:b",
        "a*b",
        None,
        3,
    ],
)
def test_bad_names_are_rejected_with_a_message(store, name, tmp_path):
    with pytest.raises(BankError) as err:
        validate_bank_name(name)
    assert str(err.value)
    img = write_image(tmp_path / "one.png", 0)
    with pytest.raises(BankError):
        store.create(name, [img])
    assert not store.root.exists()


# ---- create / read -----------------------------------------------------------------------------
def test_create_writes_documented_layout(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    info = store.create("nudity-v1", imgs, description="test bank")
    assert isinstance(info, BankInfo)
    assert info.name == "nudity-v1" and info.n_images == 3 and info.description == "test bank"
    assert len(info.content_hash) == 64 and info.short_hash == info.content_hash[:10]
    assert store.get("nudity-v1") == info
    assert store.names() == ["nudity-v1"] and store.list() == [info]

    manifest = json.loads((store.root / "banks" / "nudity-v1" / "manifest.json").read_text())
    assert manifest["name"] == "nudity-v1" and manifest["content_hash"] == info.content_hash
    assert [e["source_name"] for e in manifest["images"]] == ["img00.png", "img01.png", "img02.png"]
    for entry, src in zip(manifest["images"], imgs, strict=True):
        stored = store.root / "images" / entry["file"]
        assert entry["file"] == f"{entry['sha256']}.png"
        assert stored.read_bytes() == src.read_bytes()  # kept as given, not re-encoded
    assert store.image_paths("nudity-v1") == [store.root / "images" / e["file"] for e in manifest["images"]]


def test_content_hash_is_order_independent_and_bank_order_is_kept(store, tmp_path):
    imgs = make_images(tmp_path / "src", 4)
    a = store.create("a", imgs)
    b = store.create("b", list(reversed(imgs)))
    assert (
        a.content_hash == b.content_hash == content_hash_of([e["sha256"] for e in store.image_entries("a")])
    )
    assert store.image_paths("b") == list(reversed(store.image_paths("a")))
    c = store.create("c", imgs[:3])
    assert c.content_hash != a.content_hash


def test_dedupe_within_a_bank_across_banks_and_on_append(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    copy = tmp_path / "copy-of-0.png"
    copy.write_bytes(imgs[0].read_bytes())
    info = store.create("a", [imgs[0], copy, imgs[1], imgs[0]])
    assert info.n_images == 2
    assert [e["source_name"] for e in store.image_entries("a")] == ["img00.png", "img01.png"]
    store.create("b", [imgs[1], imgs[2]])
    assert len(list((store.root / "images").iterdir())) == 3  # the shared image is stored once

    before = store.get("a")
    appended = store.add_images("a", [copy, imgs[2], imgs[2]])
    assert appended.n_images == 3 and appended.created == before.created
    assert [e["source_name"] for e in store.image_entries("a")] == ["img00.png", "img01.png", "img02.png"]
    assert store.add_images("a", [imgs[1]]) == appended  # nothing new: unchanged


def test_other_inputs_bytes_pil_and_named_bytes(store, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="JPEG")
    info = store.create(
        "mixed", [buf.getvalue(), Image.new("RGB", (8, 8), (9, 9, 9)), ("upload.webp", _webp())]
    )
    assert info.n_images == 3
    entries = store.image_entries("mixed")
    assert [e["file"].rsplit(".", 1)[1] for e in entries] == ["jpg", "png", "webp"]
    assert entries[2]["source_name"] == "upload.webp"


def _webp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (50, 60, 70)).save(buf, format="WEBP")
    return buf.getvalue()


def test_unknown_bank(store, tmp_path):
    store.create("real", make_images(tmp_path / "src", 1))
    for call in (store.get, store.delete, store.image_paths, store.cached_sizes):
        with pytest.raises(BankNotFoundError, match="no bank named 'ghost'.*'real'") as err:
            call("ghost")
        assert isinstance(err.value, KeyError) and isinstance(err.value, SafeDenoiserError)
    with pytest.raises(BankNotFoundError):
        store.add_images("ghost", make_images(tmp_path / "more", 1))


def test_empty_store_reads_without_creating_anything(store):
    assert store.names() == [] and store.list() == []
    assert store.gc() == 0
    assert not store.root.exists()


# ---- bad input never loses data ----------------------------------------------------------------
def test_corrupt_image_names_the_file_and_writes_nothing(store, tmp_path):
    imgs = make_images(tmp_path / "src", 2)
    bad = tmp_path / "src" / "cut.png"
    data = imgs[0].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BankError, match="cut.png"):
        store.create("x", [imgs[0], bad, imgs[1]])
    assert all_files(store.root) == []


def test_corrupt_image_does_not_touch_an_existing_bank(store, tmp_path):
    imgs = make_images(tmp_path / "src", 2)
    info = store.create("keep", imgs)
    files = {p: p.read_bytes() for p in all_files(store.root)}
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(BankError, match="garbage.jpg"):
        store.create("keep", [garbage], overwrite=True)
    with pytest.raises(BankError, match="garbage.jpg"):
        store.add_images("keep", [imgs[0], garbage])
    with pytest.raises(BankError, match="missing.png"):
        store.add_images("keep", [tmp_path / "missing.png"])
    assert {p: p.read_bytes() for p in all_files(store.root)} == files
    assert store.get("keep") == info


def test_existing_name_needs_overwrite(store, tmp_path):
    first = make_images(tmp_path / "one", 2)
    second = make_images(tmp_path / "two", 1, start=10)
    store.create("bank", first)
    with pytest.raises(BankError, match="already exists"):
        store.create("bank", second)
    with pytest.raises(BankError, match="case-insensitive"):
        store.create("BANK", second, overwrite=True)
    assert store.get("bank").n_images == 2
    replaced = store.create("bank", second, overwrite=True, description="v2")
    assert replaced.n_images == 1 and store.get("bank") == replaced


def test_failed_manifest_write_keeps_old_bank_and_leaves_no_temp_files(store, tmp_path, monkeypatch):
    store.create("bank", make_images(tmp_path / "one", 2))
    old = store.get("bank")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BankError, match="No space left"):
        store.create("bank", make_images(tmp_path / "two", 1, start=5), overwrite=True)
    monkeypatch.undo()
    assert store.get("bank") == old
    assert not [p for p in store.root.rglob(".tmp-*")]


def test_damaged_or_tampered_manifest_is_a_bank_error(store, tmp_path):
    imgs = make_images(tmp_path / "src", 2)
    store.create("good", imgs)
    store.create("bad", imgs[:1])
    manifest = store.root / "banks" / "bad" / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(BankError, match="damaged manifest"):
        store.get("bad")
    assert [i.name for i in store.list()] == ["good"]  # listed banks skip it, with a log line
    data = json.loads((store.root / "banks" / "good" / "manifest.json").read_text())
    data["images"][0]["file"] = "../../../etc/passwd"
    manifest.write_text(json.dumps(data))
    with pytest.raises(BankError, match="damaged manifest"):
        store.image_paths("bad")
    assert store.gc(grace_s=0) == 0  # refuses to clean up while a manifest is unreadable
    assert len(list((store.root / "images").iterdir())) == 2
    store.delete("bad")  # what the message advises must work on a damaged bank
    assert store.names() == ["good"]


def test_missing_pool_image_is_reported(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 2))
    store.image_paths("b")[1].unlink()
    with pytest.raises(BankError, match="damaged.*missing"):
        store.image_paths("b")


# ---- folders -----------------------------------------------------------------------------------
def test_add_folder_picks_image_types_sorted_and_recursive(store, tmp_path):
    src = tmp_path / "folder"
    write_image(src / "b.jpg", 1, fmt="JPEG")
    write_image(src / "a.PNG", 2, fmt="PNG")
    write_image(src / "c.webp", 3, fmt="WEBP")
    write_image(src / "d.bmp", 4, fmt="BMP")
    write_image(src / "sub" / "e.jpeg", 5, fmt="JPEG")
    (src / "notes.txt").write_text("not an image")
    info = store.add_folder("f", src, description="from a folder")
    assert info.n_images == 4 and info.description == "from a folder"
    assert [e["source_name"] for e in store.image_entries("f")] == ["a.PNG", "b.jpg", "c.webp", "d.bmp"]
    deep = store.add_folder("f", src, recursive=True, overwrite=True)
    assert deep.n_images == 5 and store.image_entries("f")[-1]["source_name"] == "sub/e.jpeg"


def test_add_folder_errors(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(BankError, match="no images"):
        store.add_folder("x", empty)
    with pytest.raises(BankError, match="folder not found"):
        store.add_folder("x", tmp_path / "nope")
    assert not store.root.exists()


# ---- delete / gc -------------------------------------------------------------------------------
def test_delete_keeps_shared_images_and_gc_frees_the_rest(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("a", imgs[:2])
    store.create("b", imgs[1:])
    enc = CountingEncoder()
    store.latents("a", encoder=enc, vae_id="vae", latent_hw=(4, 4))
    store.delete("a")
    assert store.names() == ["b"]
    assert not (store.root / "banks" / "a").exists()
    store.image_paths("b")  # its images are all still there
    assert list((store.root / "cache").iterdir()) == []  # "a"'s latent cache went at once
    assert len(list((store.root / "images").iterdir())) == 3  # its fresh image waits for the grace period
    assert store.gc(grace_s=0) == 1
    assert sorted((store.root / "images").iterdir()) == sorted(store.image_paths("b"))


def test_recent_orphans_survive_gc_grace(store, tmp_path):
    store.create("a", make_images(tmp_path / "src", 1))
    store.delete("a")  # runs gc with the default grace: the fresh file might belong to another process
    assert len(list((store.root / "images").iterdir())) == 1
    assert store.gc(grace_s=0) == 1


# ---- latents -----------------------------------------------------------------------------------
def test_latents_encode_once_then_come_from_the_cache(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("b", imgs)
    enc = CountingEncoder()
    assert not store.has_latents("b", "sd15-vae", (4, 5))
    seen = []
    lat = store.latents(
        "b",
        encoder=enc,
        vae_id="sd15-vae",
        latent_hw=(4, 5),
        batch_size=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert lat.shape == (3, 4, 4, 5) and lat.dtype == torch.float32
    assert (enc.calls, enc.images) == (2, 3) and seen == [(2, 3), (3, 3)]
    with torch.no_grad():
        first = enc(image_to_tensor01(load_image(imgs[0]), (32, 40))[None])
    assert torch.allclose(lat[0:1], first, atol=1e-6)  # row i is image i of the bank

    assert store.has_latents("b", "sd15-vae", (4, 5)) and not store.has_latents("b", "sd15-vae", (5, 4))
    enc.calls = enc.images = 0
    again = store.latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=(4, 5))
    assert enc.calls == 0 and torch.equal(again, lat)
    assert (
        BankStore(store.root).latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=(4, 5)).shape
        == lat.shape
    )
    assert enc.calls == 0

    store.latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=(8, 8))
    assert enc.images == 3
    store.latents("b", encoder=enc, vae_id="sdxl-vae", latent_hw=(4, 5))
    assert enc.images == 6
    assert store.cached_sizes("b") == [("sd15-vae", (4, 5)), ("sd15-vae", (8, 8)), ("sdxl-vae", (4, 5))]
    cache = store.root / "cache" / store.get("b").content_hash / "sd15-vae" / "4x5.safetensors"
    assert cache.is_file()
    assert not [p for p in store.root.rglob(".tmp-*")]


def test_banks_with_equal_content_share_the_cache_in_their_own_order(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("fwd", imgs)
    store.create("rev", [imgs[2], imgs[0], imgs[1]])
    enc = CountingEncoder()
    fwd = store.latents("fwd", encoder=enc, vae_id="v", latent_hw=(4, 4))
    rev = store.latents("rev", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 3
    assert torch.equal(rev, fwd[[2, 0, 1]])


def test_appended_bank_gets_a_new_cache(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("b", imgs[:2])
    enc = CountingEncoder()
    store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    store.add_images("b", imgs[2:])
    assert store.cached_sizes("b") == []
    assert store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4)).shape[0] == 3
    assert enc.images == 5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "nan", "other_bank"])
def test_damaged_cache_is_rebuilt_and_logged(store, tmp_path, caplog, damage):
    store.create("b", make_images(tmp_path / "src", 2))
    enc = CountingEncoder()
    good = store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    info = store.get("b")
    cache = store.root / "cache" / info.content_hash / "v" / "4x4.safetensors"
    meta = {"content_hash": info.content_hash, "vae_id": "v", "order": "sha256-sorted"}
    if damage == "garbage":
        cache.write_bytes(b"\x00" * 50)
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:-20])
    elif damage == "wrong_shape":
        save_file({"latents": torch.zeros(2, 4, 3, 3)}, str(cache), metadata=meta)
    elif damage == "nan":
        save_file({"latents": torch.full((2, 4, 4, 4), float("nan"))}, str(cache), metadata=meta)
    else:
        save_file(
            {"latents": torch.zeros(2, 4, 4, 4)}, str(cache), metadata={**meta, "content_hash": "0" * 64}
        )
    enc.images = 0
    with caplog.at_level(logging.WARNING, logger="lib_safe_denoiser.banks.store"):
        again = store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 2 and torch.equal(again, good)
    assert "encoding again" in caplog.text
    enc.images = 0
    store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 0  # the rebuilt cache is sound


def test_bad_encoder_output_is_a_bank_error_and_caches_nothing(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 2))
    with pytest.raises(BankError, match="shape"):
        store.latents("b", encoder=lambda x: torch.zeros(x.shape[0], 4, 2, 2), vae_id="v", latent_hw=(4, 4))
    with pytest.raises(BankError, match="NaN"):
        store.latents(
            "b",
            encoder=lambda x: torch.full((x.shape[0], 4, 4, 4), float("inf")),
            vae_id="v",
            latent_hw=(4, 4),
        )
    assert not (store.root / "cache").exists()


def test_vae_id_is_sanitised_into_the_cache_dir(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 1))
    enc = CountingEncoder()
    for vae_id in ("../../evil/vae.safetensors", "CON", "a" * 200, "sd/vae", "sd_vae"):
        store.latents("b", encoder=enc, vae_id=vae_id, latent_hw=(2, 2))
    base = store.root / "cache" / store.get("b").content_hash
    dirs = sorted(p.name for p in base.iterdir())
    assert len(dirs) == 5 and "sd_vae" in dirs
    assert all(len(d) <= 64 and "/" not in d and not d.startswith(".") for d in dirs)
    assert not (store.root.parent / "evil").exists()
    assert sorted(v for v, _ in store.cached_sizes("b")) == sorted(
        ["../../evil/vae.safetensors", "CON", "a" * 200, "sd/vae", "sd_vae"]
    )
    for bad in ("", "   "):
        with pytest.raises(BankError, match="vae_id"):
            store.latents("b", encoder=enc, vae_id=bad, latent_hw=(2, 2))
    for hw in ((0, 4), (4.0, 4), (4,), "4x4"):
        with pytest.raises(BankError, match="latent_hw"):
            store.latents("b", encoder=enc, vae_id="v", latent_hw=hw)


def test_atomic_copy_refuses_a_file_that_changed_since_it_was_validated(tmp_path):
    src = write_image(tmp_path / "a.png", 0)
    dst = tmp_path / "pool" / "x.png"
    with pytest.raises(BankError, match="changed"):
        atomic_copy(src, dst, expected_sha256="0" * 64)
    assert list((tmp_path / "pool").iterdir()) == []  # neither the target nor a temp file
    atomic_copy(src, dst, expected_sha256=sha256_file(src))
    assert dst.read_bytes() == src.read_bytes()
