"""Glue tests: the extension's scripts/ on the stand-in ``modules`` (tests/webui_stub)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

STUB = Path(__file__).resolve().parents[1] / "webui_stub"
if str(STUB) not in sys.path:
    sys.path.insert(0, str(STUB))

from modules import script_callbacks, shared  # noqa: E402  (the stub must be importable first)

from tests.glue import harness  # noqa: E402


def smooth_picture(seed: int, size: int = 64) -> Image.Image:
    """A smooth RGB picture (a few low-frequency waves), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = [0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy)
                                   + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray((np.stack(channels, -1) * 255).round().astype(np.uint8))


SCRIPT_FILES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "scripts").glob("*.py"))


@pytest.fixture(scope="session")
def glue():
    """The accordion's script module, with every script file of the extension loaded once as the WebUI
    loads them (callbacks registered at import)."""
    shared.sd_model = harness.TinyModel()
    modules = {name: importlib.import_module(f"scripts.{name}") for name in SCRIPT_FILES}
    return modules["safe_denoiser"]


@pytest.fixture(scope="session")
def banks(glue, tmp_path_factory):
    """An "unsafe" bank (jittered copies of picture 1) and a safe reference bank (pictures 2 and others)."""
    harness.PICTURES.update({prompt: smooth_picture(prompt) for prompt in (harness.UNSAFE, *harness.SAFE)})
    folder = tmp_path_factory.mktemp("bank-images")
    unsafe, reference = folder / "unsafe", folder / "reference"
    unsafe.mkdir()
    reference.mkdir()
    rng = np.random.default_rng(0)
    base = np.asarray(harness.PICTURES[harness.UNSAFE], dtype=np.float32)
    for i in range(6):
        jitter = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(jitter).save(unsafe / f"u{i}.png")
    for i, prompt in enumerate(harness.SAFE):
        harness.PICTURES[prompt].save(reference / f"r{i}.png")
    glue.STORE.add_folder("unsafe", unsafe)
    glue.STORE.add_folder("reference", reference)
    return {"unsafe": "unsafe", "reference": "reference"}


@pytest.fixture
def script(glue, banks):
    """A fresh Script instance (as the WebUI makes one per tab); no callbacks of ours before or after,
    and no last job on either tab."""
    shared.sd_model = harness.TinyModel()
    shared.state.begin()
    glue.FACTORY.clear()
    glue.LAST_JOBS.clear()
    s = glue.SafeDenoiserScript()
    yield s
    glue.unregister_callbacks()


def our_callbacks(glue) -> list[str]:
    mine = {fn for _, fn in glue._CALLBACKS}
    return [c.name for cbs in script_callbacks.callback_map.values() for c in cbs if c.callback in mine]


def last_job(glue, is_img2img: bool = False):
    """The last job on a tab of the local user (no --gradio-auth or --api-auth: no user name)."""
    return glue.LAST_JOBS[(None, is_img2img)]
