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
    rc, out, _ = run(
        ["bank", "add", "nudity-v1", str(src), "--data-dir", str(data), "--description", "hi"], capsys
    )
    assert rc == 0 and "3 images" in out
    store = BankStore(data / "safe_denoiser")
    info = store.get("nudity-v1")
    assert info.description == "hi"

    rc, out, _ = run(["bank", "list", "--data-dir", str(data)], capsys)
    assert rc == 0 and "nudity-v1" in out and info.short_hash in out
    rc, out, _ = run(
        ["--data-dir", str(data), "bank", "list", "--json"], capsys
    )  # --data-dir first works too
    assert rc == 0 and json.loads(out)[0]["content_hash"] == info.content_hash

    rc, out, _ = run(["bank", "show", "nudity-v1", "--data-dir", str(data)], capsys)
    assert rc == 0 and info.content_hash in out and "00.png" in out and "none" in out
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


def test_overwrite_and_append(tmp_path, capsys):
    data = str(tmp_path / "data")
    make_folder(tmp_path / "one", 2)
    make_folder(tmp_path / "two", 2, start=1)  # image 01 is in both
    assert run(["bank", "add", "b", str(tmp_path / "one"), "--data-dir", data], capsys)[0] == 0
    rc, _, err = run(["bank", "add", "b", str(tmp_path / "two"), "--data-dir", data], capsys)
    assert rc == 2 and "already exists" in err
    rc, out, _ = run(["bank", "add", "b", str(tmp_path / "two"), "--append", "--data-dir", data], capsys)
    assert rc == 0 and "added 1 images, now 3" in out
    rc, out, _ = run(["bank", "add", "b", str(tmp_path / "two"), "--overwrite", "--data-dir", data], capsys)
    assert rc == 0 and BankStore(Path(data) / "safe_denoiser").get("b").n_images == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["bank", "add", "../x", "{src}"],
        ["bank", "add", "ok", "{tmp}/no-such-folder"],
        ["bank", "add", "ok", "{tmp}/empty"],
        ["bank", "add", "ok", "{tmp}/bad"],
        ["bank", "show", "ghost"],
        ["bank", "delete", "ghost"],
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, argv):
    src = make_folder(tmp_path / "imgs", 1)
    (tmp_path / "empty").mkdir()
    make_folder(tmp_path / "bad", 1)
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
