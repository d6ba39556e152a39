"""The bank tab's actions without gradio: access rules, messages, upload collection, paging."""

from __future__ import annotations

import os
import zipfile

import pytest

from lib_safe_denoiser.banks import manage
from lib_safe_denoiser.banks.store import BankStore, CacheEntry
from lib_safe_denoiser.policy.users import User
from tests.banks.sample_images import encode, scene

ALICE = User("alice", operator=False)
BOB = User("bob", operator=False)
ROOT = User("root", operator=True)
ANONYMOUS = User(None, operator=True)


@pytest.fixture
def store(tmp_path):
    return BankStore(tmp_path / "store")


def png(tmp_path, name: str, seed: int) -> str:
    path = tmp_path / name
    path.write_bytes(encode(scene(seed), "PNG"))
    return str(path)


def test_each_user_sees_shared_banks_and_their_own(store, tmp_path):
    files = [png(tmp_path, "a.png", 1)]
    store.create("shared", files)
    store.create("alices", files, owner="alice")
    store.create("bobs", files, owner="bob")
    assert manage.bank_choices(store, ALICE) == ["alices", "shared"]
    assert manage.bank_choices(store, ROOT) == ["alices", "bobs", "shared"]
    out = manage.open_bank(store, ALICE, "bobs")
    assert not out.ok and out.message == "No bank named 'bobs' that you can see; press refresh to update the list"
    assert manage.open_bank(store, ALICE, "shared").message.endswith("read-only for you.")
    assert manage.open_bank(store, ROOT, "shared").message.endswith("you can change it.")


def test_who_you_are_is_said_plainly():
    assert "everyone is one anonymous user, who may manage every bank" in manage.describe_user(ANONYMOUS)
    assert "who may only look at the shared banks" in manage.describe_user(User(None, operator=False))
    assert manage.describe_user(ALICE).startswith("Signed in as alice:")
    assert "an operator" in manage.describe_user(ROOT)


def test_collect_uploads_opens_zips_and_names_their_members(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dir/one.png", encode(scene(1), "PNG"))
        zf.writestr("notes.txt", "hello")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not a zip")
    plain = png(tmp_path, "plain.png", 2)
    sources, skipped = manage.collect_uploads([plain, str(archive), str(broken)])
    assert [name for name, _ in sources] == ["plain.png", "set.zip/dir/one.png"]
    assert isinstance(sources[1][1], bytes)
    assert [s.name for s in skipped] == ["set.zip/notes.txt", "broken.zip"]
    assert "not a readable zip" in skipped[1].reason


def test_a_report_lists_every_skipped_file_and_duplicate(store, tmp_path):
    good = png(tmp_path, "good.png", 3)
    copy = tmp_path / "copy.png"
    copy.write_bytes((tmp_path / "good.png").read_bytes())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = manage.create_bank(store, ALICE, "mine", [good, str(copy), str(bad)])
    assert out.ok
    assert out.message == "Created 1 image(s) in bank 'mine' (now 1); 1 duplicate(s) left out; 1 file(s) skipped."
    assert out.details[0].startswith("Skipped bad.png: ") and out.details[1] == "Duplicate, left out: copy.png"
    assert store.get("mine").owner == "alice"


def test_long_detail_lists_are_cut_and_counted():
    lines = manage._bounded(f"line {i}" for i in range(manage.MAX_DETAIL_LINES + 7))
    assert len(lines) == manage.MAX_DETAIL_LINES + 1 and lines[-1] == "... and 7 more"


def test_pages_are_clamped_and_labelled(store, tmp_path):
    store.create("paged", [png(tmp_path, f"p{i}.png", 10 + i) for i in range(5)])
    out = manage.gallery_page(store, ALICE, "paged", 9, page_size=2)
    page = out.data
    assert (page.page, page.pages, page.total, len(page.items)) == (3, 3, 5, 1)
    assert out.message == "Page 3 of 3: images 5-5 of 5"
    assert page.items[0].caption == "p4.png" and page.items[0].png.startswith(b"\x89PNG")
    assert manage.page_count(0) == 1 and manage.page_count(48) == 1 and manage.page_count(49) == 2


def test_cache_labels_round_trip_and_bad_ones_are_refused():
    row = CacheEntry("sdxl-vae-my vae.safetensors", (128, 96), "crop", 3 << 20, "2024-01-01")
    assert manage.parse_cache_label(manage.cache_label(row)) == ("sdxl-vae-my vae.safetensors", (128, 96))
    assert manage.cache_cells(row)[:5] == ["sdxl-vae-my vae.safetensors", "128x96", "768x1024", "crop", 3.0]
    with pytest.raises(manage.BankError, match="choose a latent cache"):
        manage.parse_cache_label("whatever")


def test_exports_are_pruned_after_they_had_time_to_download(tmp_path):
    old, new = tmp_path / "export-old", tmp_path / "export-new"
    old.mkdir()
    new.mkdir()
    (old / "x.zip").write_bytes(b"zip")
    os.utime(old, (0, 0))
    manage.prune_exports(tmp_path)
    assert not old.exists() and new.exists()


def test_encode_answers_for_the_callable_and_its_failures(store, tmp_path):
    store.create("enc", [png(tmp_path, "e.png", 1)])
    seen = []

    class Result:
        bank, vae_id, latent_hw, n_images = "enc", "vae-x", (8, 8), 1

    def encode_ok(bank, width, height, progress):
        seen.append((bank, width, height))
        return Result()

    out = manage.encode_bank(store, BOB, "enc", 64.0, 64.0, encode_ok)
    assert out.ok and out.message == "Bank 'enc' is encoded for vae-x at 64x64 (8x8 latents, 1 images)."
    assert seen == [("enc", 64, 64)]

    def encode_cancelled(bank, width, height, progress):
        raise manage.BankError("encoding cancelled after 0 of 1 images; nothing was saved")

    assert manage.encode_bank(store, BOB, "enc", 64, 64, encode_cancelled).message.startswith("Encoding cancelled")
    assert "whole numbers" in manage.encode_bank(store, BOB, "enc", "wide", 64, encode_ok).message


def test_import_over_an_existing_bank_needs_the_right_to_change_it(store, tmp_path):
    store.create("alices", [png(tmp_path, "a.png", 1)], owner="alice")
    archive = store.export_bank("alices", tmp_path / "alices.zip", latents="none")
    assert "Type the name of the bank to replace" in manage.import_bank(store, BOB, archive, overwrite=True).message
    out = manage.import_bank(store, BOB, archive, name="alices", overwrite=True)
    assert out.message == "A bank named 'alices' already exists; choose another name"
    out = manage.import_bank(store, ALICE, archive.read_bytes(), name="alices-2")
    assert out.ok and store.get("alices-2").owner == "alice"
