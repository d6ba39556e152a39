"""The command line: bank add/list/show/delete, data-dir resolution, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.cli import DATA_DIR_ENV, default_data_dir, main

REPO = Path(__file__).resolve().parents[2]


def make_folder(folder: Path, n: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        arr = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:02d}.png")
    return folder


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_add_list_show_delete(tmp_path, capsys):
    data = tmp_path / "data"
    src = make_folder(tmp_path / "imgs", 3)
    rc, out, _ = run(["bank", "add", "nudity-v1", str(src), "--data-dir", str(data), "--description", "hi",
                      "--tags", "a,b", "--resize", "pad", "--owner", "ann"], capsys)
    assert rc == 0 and "Added 3 images to 'nudity-v1' (now 3)" in out
    store = BankStore(data / "safe_denoiser")
    info = store.get("nudity-v1")
    assert (info.description, info.tags, info.resize, info.owner) == ("hi", ("a", "b"), "pad", "ann")

    rc, out, _ = run(["bank", "list", "--data-dir", str(data)], capsys)
    assert rc == 0 and "nudity-v1" in out and info.short_hash in out and "owner ann; pad; tags a,b" in out
    rc, out, _ = run(["--data-dir", str(data), "bank", "list", "--json"], capsys)  # --data-dir first works too
    assert rc == 0 and json.loads(out)[0]["content_hash"] == info.content_hash

    rc, out, _ = run(["bank", "show", "nudity-v1", "--data-dir", str(data)], capsys)
    assert rc == 0 and info.content_hash in out and "00.png" in out and "none" in out and "ann" in out
    rc, out, _ = run(["bank", "show", "nudity-v1", "--json", "--data-dir", str(data)], capsys)
    shown = json.loads(out)
    assert shown["n_images"] == 3 and len(shown["images"]) == 3 and shown["cached_latents"] == []

    rc, out, _ = run(["bank", "delete", "nudity-v1", "--data-dir", str(data)], capsys)
    assert rc == 0 and store.names() == []
    assert len(list((store.root / "images").iterdir())) == 3  # fresh files wait out the grace period
    rc, out, _ = run(["bank", "gc", "--grace", "0", "--data-dir", str(data)], capsys)
    assert rc == 0 and "removed 3" in out and list((store.root / "images").iterdir()) == []
    rc, out, _ = run(["bank", "list", "--data-dir", str(data)], capsys)
    assert rc == 0 and "no banks" in out


def test_add_reports_skipped_files_and_exits_1_only_if_nothing_was_added(tmp_path, capsys):
    data = str(tmp_path / "data")
    src = make_folder(tmp_path / "imgs", 2)
    (src / "zz.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (src / "notes.txt").write_text("x")
    rc, out, _ = run(["bank", "add", "b", str(src), "--data-dir", data], capsys)
    assert rc == 0 and out.startswith("Added 2 images to 'b' (now 2); skipped 2: ")
    assert "  skipped notes.txt: not an image file type" in out and "  skipped zz.jpg: " in out
    rc, out, _ = run(["bank", "add", "b", str(src), "--append", "--data-dir", data], capsys)
    assert rc == 1 and "Added 0 images" in out and "2 duplicates left out" in out


def test_overwrite_and_append(tmp_path, capsys):
    data = str(tmp_path / "data")
    make_folder(tmp_path / "one", 2)
    make_folder(tmp_path / "two", 2, start=1)  # image 01 is in both
    assert run(["bank", "add", "b", str(tmp_path / "one"), "--data-dir", data], capsys)[0] == 0
    rc, _, err = run(["bank", "add", "b", str(tmp_path / "two"), "--data-dir", data], capsys)
    assert rc == 2 and "already exists" in err
    rc, out, _ = run(["bank", "add", "b", str(tmp_path / "two"), "--append", "--data-dir", data], capsys)
    assert rc == 0 and "Added 1 image to 'b' (now 3); 1 duplicate left out" in out
    rc, out, _ = run(["bank", "add", "b", str(tmp_path / "two"), "--overwrite", "--data-dir", data], capsys)
    assert rc == 0 and BankStore(Path(data) / "safe_denoiser").get("b").n_images == 2


def test_update_remove_rename(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert run(["bank", "add", "b", str(make_folder(tmp_path / "imgs", 3)), "--data-dir", data], capsys)[0] == 0
    store = BankStore(Path(data) / "safe_denoiser")
    rc, out, _ = run(["bank", "update", "b", "--tags", "x, y", "--resize", "stretch", "--data-dir", data], capsys)
    assert rc == 0 and store.get("b").tags == ("x", "y") and store.get("b").resize == "stretch"
    shas = [e["sha256"] for e in store.image_entries("b")]
    rc, out, _ = run(["bank", "remove", "b", shas[0][:10], shas[2], "--data-dir", data], capsys)
    assert rc == 0 and "1 images left" in out and [e["sha256"] for e in store.image_entries("b")] == [shas[1]]
    for prefix, message in (("abc", "too short"), ("f" * 12, "no image whose hash starts")):
        rc, _, err = run(["bank", "remove", "b", prefix, "--data-dir", data], capsys)
        assert rc == 2 and message in err
    rc, out, _ = run(["bank", "rename", "b", "c", "--data-dir", data], capsys)
    assert rc == 0 and "renamed to 'c'" in out and store.names() == ["c"]


def test_export_import(tmp_path, capsys):
    data, other = str(tmp_path / "data"), str(tmp_path / "other")
    assert run(["bank", "add", "b", str(make_folder(tmp_path / "imgs", 2)), "--data-dir", data], capsys)[0] == 0
    rc, out, _ = run(["bank", "export", "b", str(tmp_path), "--latents", "none", "--data-dir", data], capsys)
    assert rc == 0 and f"exported to {tmp_path / 'b.zip'}" in out
    rc, out, _ = run(["bank", "import", str(tmp_path / "b.zip"), "--name", "c", "--owner", "u", "--data-dir", other],
                     capsys)
    assert rc == 0 and "bank 'c' imported: 2 images" in out
    info = BankStore(Path(other) / "safe_denoiser").get("c")
    assert info.owner == "u" and info.content_hash == BankStore(Path(data) / "safe_denoiser").get("b").content_hash
    rc, _, err = run(["bank", "import", str(tmp_path / "b.zip"), "--name", "c", "--data-dir", other], capsys)
    assert rc == 2 and "already exists" in err
    rc, _, err = run(["bank", "export", "b", str(tmp_path / "x.zip"), "--latents", "only", "--data-dir", data], capsys)
    assert rc == 2 and "no cached latents" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bank", "add", "../x", "{src}"],
        ["bank", "add", "ok", "{tmp}/no-such-folder"],
        ["bank", "add", "ok", "{tmp}/empty"],
        ["bank", "add", "ok", "{tmp}/bad"],
        ["bank", "add", "ok", "{src}", "--tags", "a" * 40],
        ["bank", "show", "ghost"],
        ["bank", "delete", "ghost"],
        ["bank", "rename", "ghost", "x"],
        ["bank", "remove", "ghost", "abcdef"],
        ["bank", "update", "ghost", "--description", "x"],
        ["bank", "export", "ghost"],
        ["bank", "import", "{tmp}/missing.zip"],
        ["bank", "import", "{src}/00.png"],
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, argv):
    src = make_folder(tmp_path / "imgs", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "zz.jpg").write_bytes(b"\xff\xd8\xff truncated")
    argv = [a.format(src=src, tmp=tmp_path) for a in argv] + ["--data-dir", str(tmp_path / "data")]
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.glob("data/safe_denoiser/banks/*/manifest.json")) == []


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bank"])
    assert exc.value.code == 2
    assert "ACTION" in capsys.readouterr().err


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_data_dir({DATA_DIR_ENV: "/some/where"}) == Path("/some/where")
    webui = tmp_path / "webui"
    pkg = webui / "extensions" / "sd-webui-safe-denoiser" / "lib_safe_denoiser"
    pkg.mkdir(parents=True)
    (webui / "webui.py").write_text("")
    assert default_data_dir({}, pkg) == webui
    data = tmp_path / "custom-data"  # WebUI run with --data-dir: extensions live in <data>/extensions
    pkg2 = data / "extensions" / "ext" / "lib_safe_denoiser"
    pkg2.mkdir(parents=True)
    assert default_data_dir({}, pkg2) == data
    loose = tmp_path / "checkout" / "lib_safe_denoiser"
    loose.mkdir(parents=True)
    assert default_data_dir({}, loose) == Path.cwd()
    assert default_data_dir({DATA_DIR_ENV: ""}, loose) == Path.cwd()


def test_python_dash_m_bank_add(tmp_path):
    src = make_folder(tmp_path / "imgs", 2)
    env = {**os.environ, "PYTHONPATH": str(REPO), DATA_DIR_ENV: str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-m", "lib_safe_denoiser", "bank", "add", "cli bank", str(src)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 images" in proc.stdout
    assert BankStore(tmp_path / "data" / "safe_denoiser").get("cli bank").n_images == 2
