"""install.py, run by the WebUI's launcher: installs only what is missing, never torch."""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[2] / "install.py"


ALL = {"safetensors", "tqdm", "filelock", "matplotlib", "open_clip_torch"}


@pytest.mark.parametrize("present, expected", [
    (ALL, []),
    (ALL - {"tqdm", "matplotlib"}, ["install tqdm", "install matplotlib"]),
    (ALL - {"filelock"}, ["install filelock"]),
    (ALL - {"open_clip_torch"}, ["install open_clip_torch"]),
])
def test_install_only_what_is_missing(monkeypatch, present, expected):
    calls: list[str] = []
    launch = types.SimpleNamespace(is_installed=lambda package: package in present,
                                   run_pip=lambda command, desc=None, live=False: calls.append(command))
    monkeypatch.setitem(sys.modules, "launch", launch)
    runpy.run_path(str(INSTALL))
    assert calls == expected
    assert not any(c.split()[1] in ("torch", "torchvision") for c in calls)  # the WebUI owns torch
