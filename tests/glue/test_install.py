"""install.py, run by the WebUI's launcher: installs only what is missing, never torch."""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[2] / "install.py"


@pytest.mark.parametrize("present, expected", [
    ({"safetensors", "tqdm", "filelock", "matplotlib"}, []),
    ({"safetensors", "filelock"}, ["install tqdm", "install matplotlib"]),
    ({"safetensors", "tqdm", "matplotlib"}, ["install filelock"]),
])
def test_install_only_what_is_missing(monkeypatch, present, expected):
    calls: list[str] = []
    launch = types.SimpleNamespace(is_installed=lambda package: package in present,
                                   run_pip=lambda command, desc=None, live=False: calls.append(command))
    monkeypatch.setitem(sys.modules, "launch", launch)
    runpy.run_path(str(INSTALL))
    assert calls == expected
    assert not any("torch" in c for c in calls)
