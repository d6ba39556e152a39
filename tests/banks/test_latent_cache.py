"""Latents through the store: encode once, cache by (content, VAE, resize, size), LRU eviction,
cancel, damaged files, and latents-only banks."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch
from safetensors.torch import save_file

from lib_safe_denoiser.banks.encode import encode_images
from lib_safe_denoiser.banks.images import image_to_tensor01, load_image
from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.errors import BankError, EncodeCancelled
from tests.banks.store_helpers import CountingEncoder, make_images, write_image

HW = (4, 5)


@pytest.fixture
def store(tmp_path) -> BankStore:
    return BankStore(tmp_path / "data" / "safe_denoiser")


def cache_file(store: BankStore, bank: str, vae: str = "v", hw=HW, resize: str = "crop"):
    return store.root / "cache" / store.get(bank).content_hash / vae / f"{hw[0]}x{hw[1]}.{resize}.safetensors"


def test_latents_encode_once_then_come_from_the_cache(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("b", imgs)
    enc = CountingEncoder()
    assert not store.has_latents("b", "sd15-vae", HW) and store.cache_status("b") == []
    seen = []
    lat = store.latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=HW, batch_size=2,
                        progress=lambda d, t: seen.append((d, t)))
    assert lat.shape == (3, 4, 4, 5) and lat.dtype == torch.float32
    assert (enc.calls, enc.images) == (2, 3) and seen == [(2, 3), (3, 3)]
    with torch.no_grad():
        first = enc(image_to_tensor01(load_image(imgs[0]), (32, 40))[None])
    assert torch.allclose(lat[0:1], first, atol=1e-6)  # row i is image i of the bank

    assert store.has_latents("b", "sd15-vae", HW) and not store.has_latents("b", "sd15-vae", (5, 4))
    enc.calls = enc.images = 0
    assert torch.equal(store.latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=HW), lat)
    assert torch.equal(BankStore(store.root).latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=HW), lat)
    assert enc.calls == 0

    store.latents("b", encoder=enc, vae_id="sd15-vae", latent_hw=(8, 8))
    store.latents("b", encoder=enc, vae_id="sdxl-vae", latent_hw=HW)
    assert enc.images == 6
    status = store.cache_status("b")
    assert [(c.vae_id, c.latent_hw, c.resize, c.carried) for c in status] == [
        ("sd15-vae", (4, 5), "crop", False), ("sd15-vae", (8, 8), "crop", False), ("sdxl-vae", (4, 5), "crop", False)]
    assert status[0].bytes == cache_file(store, "b", "sd15-vae").stat().st_size > 3 * 4 * 4 * 5 * 4
    assert status[0].as_dict()["latent_hw"] == [4, 5] and status[0].last_used.endswith("+00:00")
    assert not list(store.root.rglob(".tmp-*"))


def test_banks_with_equal_content_share_the_cache_in_their_own_order(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("fwd", imgs)
    store.create("rev", [imgs[2], imgs[0], imgs[1]])
    enc = CountingEncoder()
    fwd = store.latents("fwd", encoder=enc, vae_id="v", latent_hw=(4, 4))
    rev = store.latents("rev", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 3 and torch.equal(rev, fwd[[2, 0, 1]])


def test_changed_content_gets_a_new_cache_and_the_old_one_goes(store, tmp_path):
    imgs = make_images(tmp_path / "src", 3)
    store.create("b", imgs[:2])
    enc = CountingEncoder()
    store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    old = store.get("b").content_hash
    store.add_images("b", imgs[2:])
    assert store.cache_status("b") == [] and not (store.root / "cache" / old).exists()
    assert store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4)).shape[0] == 3 and enc.images == 5


def test_the_resize_policy_is_used_and_keys_the_cache(store, tmp_path):
    imgs = [write_image(tmp_path / "wide.png", 1, size=(64, 16)), write_image(tmp_path / "tall.png", 2, size=(16, 48))]
    store.create("b", imgs, resize="pad")
    enc = CountingEncoder()
    padded = store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    expected = encode_images(imgs, CountingEncoder(), (32, 32), resize="pad")
    assert torch.allclose(padded, expected, atol=1e-6)
    store.update("b", resize="crop")
    cropped = store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 4 and not torch.allclose(cropped, padded)
    assert sorted(c.resize for c in store.cache_status("b")) == ["crop", "pad"]
    assert cache_file(store, "b", hw=(4, 4), resize="pad").is_file()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "nan", "other_bank", "other_resize"])
def test_damaged_cache_is_rebuilt_and_logged(store, tmp_path, caplog, damage):
    store.create("b", make_images(tmp_path / "src", 2))
    enc = CountingEncoder()
    good = store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    cache = cache_file(store, "b", hw=(4, 4))
    meta = {"content_hash": store.get("b").content_hash, "vae_id": "v", "resize": "crop", "order": "sha256-sorted"}
    if damage == "garbage":
        cache.write_bytes(b"\x00" * 50)
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:-20])
    elif damage == "wrong_shape":
        save_file({"latents": torch.zeros(2, 4, 3, 3)}, str(cache), metadata=meta)
    elif damage == "nan":
        save_file({"latents": torch.full((2, 4, 4, 4), float("nan"))}, str(cache), metadata=meta)
    elif damage == "other_bank":
        save_file({"latents": torch.zeros(2, 4, 4, 4)}, str(cache), metadata={**meta, "content_hash": "0" * 64})
    else:
        save_file({"latents": torch.zeros(2, 4, 4, 4)}, str(cache), metadata={**meta, "resize": "pad"})
    enc.images = 0
    with caplog.at_level(logging.WARNING, logger="lib_safe_denoiser.banks.latent_cache"):
        again = store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 2 and torch.equal(again, good) and "encoding again" in caplog.text
    enc.images = 0
    store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert enc.images == 0  # the rebuilt cache is sound


def test_bad_encoder_output_is_a_bank_error_and_caches_nothing(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 2))
    with pytest.raises(BankError, match="shape"):
        store.latents("b", encoder=lambda x: torch.zeros(x.shape[0], 4, 2, 2), vae_id="v", latent_hw=(4, 4))
    with pytest.raises(BankError, match="NaN"):
        store.latents("b", encoder=lambda x: torch.full((x.shape[0], 4, 4, 4), float("inf")), vae_id="v",
                      latent_hw=(4, 4))
    assert not (store.root / "cache").exists()


def test_cancel_stops_between_batches_and_caches_nothing(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 5))
    enc = CountingEncoder()
    with pytest.raises(EncodeCancelled):
        store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4), batch_size=2, cancel=lambda: enc.calls >= 1)
    assert enc.calls == 1 and not store.has_latents("b", "v", (4, 4)) and store.cache_status("b") == []
    assert store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4), cancel=lambda: False).shape[0] == 5


def test_vae_id_and_latent_hw_are_checked_and_sanitised(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 1))
    enc = CountingEncoder()
    ids = ["../../evil/vae.safetensors", "CON", "a" * 200, "sd/vae", "sd_vae"]
    for vae_id in ids:
        store.latents("b", encoder=enc, vae_id=vae_id, latent_hw=(2, 2))
    dirs = sorted(p.name for p in (store.root / "cache" / store.get("b").content_hash).iterdir())
    assert len(dirs) == 5 and "sd_vae" in dirs
    assert all(len(d) <= 64 and "/" not in d and not d.startswith(".") for d in dirs)
    assert not (store.root.parent / "evil").exists()
    assert sorted(c.vae_id for c in store.cache_status("b")) == sorted(ids)
    for bad in ("", "   ", None):
        with pytest.raises(BankError, match="vae_id"):
            store.latents("b", encoder=enc, vae_id=bad, latent_hw=(2, 2))
    for hw in ((0, 4), (4.0, 4), (4,), "4x4"):
        with pytest.raises(BankError, match="latent_hw"):
            store.latents("b", encoder=enc, vae_id="v", latent_hw=hw)
        with pytest.raises(BankError, match="latent_hw"):
            store.has_latents("b", "v", hw)


# ---- eviction ----------------------------------------------------------------------------------
def _age(path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_lru_eviction_across_banks_keeps_recently_used_and_the_file_just_written(tmp_path):
    root = tmp_path / "store"
    plain = BankStore(root)
    plain.create("a", make_images(tmp_path / "a", 2))
    plain.create("b", make_images(tmp_path / "b", 2, start=10))
    enc = CountingEncoder()
    plain.latents("a", encoder=enc, vae_id="v", latent_hw=(4, 4))
    one = cache_file(plain, "a", hw=(4, 4)).stat().st_size  # every file below has this size
    store = BankStore(root, cache_limit_bytes=2 * one)
    store.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    _age(cache_file(store, "a", hw=(4, 4)), 300)
    _age(cache_file(store, "b", hw=(4, 4)), 200)
    store.latents("a", encoder=enc, vae_id="v", latent_hw=(4, 4))  # a hit: "a" is now the most recent
    assert enc.images == 4
    store.latents("a", encoder=enc, vae_id="w", latent_hw=(4, 4))  # third file: the least recent ("b") goes
    assert cache_file(store, "a", hw=(4, 4)).is_file() and cache_file(store, "a", "w", hw=(4, 4)).is_file()
    assert not cache_file(store, "b", hw=(4, 4)).exists() and store.cache_status("b") == []
    assert not (store.root / "cache" / store.get("b").content_hash).exists()  # empty folders go too
    assert enc.images == 6

    tiny = BankStore(root, cache_limit_bytes=1)  # smaller than any file: only the one just written stays
    lat = tiny.latents("b", encoder=enc, vae_id="v", latent_hw=(4, 4))
    assert [p.name for p in (root / "cache").rglob("*.safetensors")] == ["4x4.crop.safetensors"]
    assert cache_file(tiny, "b", hw=(4, 4)).is_file() and lat.shape == (2, 4, 4, 4)
    unbounded = BankStore(root, cache_limit_bytes=None)
    assert unbounded.cache.evict() == 0 and unbounded.cache_limit_bytes is None
    unbounded.cache_limit_bytes = 1  # as the WebUI does when its setting changes
    assert unbounded.cache_limit_bytes == 1 and unbounded.cache.limit_bytes == 1
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(BankError, match="cache_limit_bytes"):
            BankStore(root, cache_limit_bytes=bad)
        with pytest.raises(BankError, match="cache_limit_bytes"):
            unbounded.cache_limit_bytes = bad


def test_drop_cache(store, tmp_path):
    store.create("b", make_images(tmp_path / "src", 2))
    enc = CountingEncoder()
    for vae, hw in (("v", (4, 4)), ("v", (8, 8)), ("w", (4, 4))):
        store.latents("b", encoder=enc, vae_id=vae, latent_hw=hw)
    assert store.drop_cache("b", vae_id="v", latent_hw=(8, 8)) == 1
    assert [(c.vae_id, c.latent_hw) for c in store.cache_status("b")] == [("v", (4, 4)), ("w", (4, 4))]
    assert store.drop_cache("b", latent_hw=(4, 4)) == 2 and store.cache_status("b") == []
    assert store.drop_cache("b") == 0
    store.latents("b", encoder=enc, vae_id="w", latent_hw=(4, 4))
    assert store.drop_cache("b", vae_id="w") == 1


# ---- latents-only banks ------------------------------------------------------------------------
def test_a_latents_only_bank_serves_only_what_it_carries(store, tmp_path):
    store.create("full", make_images(tmp_path / "src", 3), tags=["x"])
    enc = CountingEncoder()
    lat = store.latents("full", encoder=enc, vae_id="sd15", latent_hw=(4, 4))
    archive = store.export_bank("full", tmp_path / "only.zip", latents="only")
    other = BankStore(tmp_path / "elsewhere")
    info = other.import_bank(archive)
    assert info.has_images is False and info.content_hash == store.get("full").content_hash and info.n_images == 3
    assert torch.equal(other.latents("full", encoder=enc, vae_id="sd15", latent_hw=(4, 4)), lat) and enc.images == 3
    assert other.has_latents("full", "sd15", (4, 4)) and not other.has_latents("full", "sd15", (8, 8))
    with pytest.raises(BankError, match=r"has no images .* carries: 'sd15' at 4x4 \(crop\)") as err:
        other.latents("full", encoder=enc, vae_id="sdxl", latent_hw=(8, 8))
    assert "'sdxl' at 8x8" in str(err.value) and enc.images == 3
    status = other.cache_status("full")
    assert [(c.vae_id, c.latent_hw, c.carried) for c in status] == [("sd15", (4, 4), True)]
    assert other.drop_cache("full") == 0 and other.has_latents("full", "sd15", (4, 4))  # its data, not a cache
    assert other.gc(grace_s=0) == 0 and other.has_latents("full", "sd15", (4, 4))
    assert [e["file"] for e in other.image_entries("full")] == ["", "", ""]
    sha = other.image_entries("full")[0]["sha256"]
    for call in (lambda: other.image_paths("full"), lambda: other.image_path("full", sha),
                 lambda: other.thumbnail("full", sha), lambda: other.add_images("full", make_images(tmp_path / "m", 1)),
                 lambda: other.remove_images("full", [sha]), lambda: other.update("full", resize="pad")):
        with pytest.raises(BankError, match="has no images"):
            call()
    assert other.update("full", description="d", tags=["y"]).tags == ("y",)
    renamed = other.rename("full", "moved")
    assert torch.equal(other.latents("moved", encoder=enc, vae_id="sd15", latent_hw=(4, 4)), lat)
    assert renamed.has_images is False and other.near_duplicates("moved") == []


def test_a_damaged_carried_latent_file_is_an_error_not_a_rebuild(store, tmp_path):
    store.create("full", make_images(tmp_path / "src", 2))
    store.latents("full", encoder=CountingEncoder(), vae_id="v", latent_hw=(4, 4))
    store.import_bank(store.export_bank("full", tmp_path / "o.zip", latents="only"), name="lat")
    carried = next((store.root / "banks" / "lat" / "latents").rglob("*.safetensors"))
    carried.write_bytes(b"garbage")
    with pytest.raises(BankError, match="damaged"):
        store.latents("lat", encoder=CountingEncoder(), vae_id="v", latent_hw=(4, 4))
