"""End-to-end tests against a live WebUI: set SD_WEBUI_URL (and SD_WEBUI_DATA_DIR, its --data-dir).

For a WebUI started with ``--api-auth``, SD_WEBUI_AUTH_USER / SD_WEBUI_AUTH_PASSWORD are sent as HTTP basic
auth (a WebUI without ``--api-auth`` ignores them); SD_WEBUI_AUTH_URL names such an instance for
test_api_auth.py, which is skipped without it.

Every test under tests/e2e gets the ``e2e`` mark here (a ``pytestmark`` in a conftest.py does not reach
the test modules), so ``-m e2e`` / ``-m "not e2e"`` select them; without SD_WEBUI_URL they are skipped.
The banks the tests use are created in ``$SD_WEBUI_DATA_DIR/safe_denoiser`` with the bank store, as
``python -m lib_safe_denoiser bank add`` would; the WebUI must have this extension installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.cli import STORE_SUBDIR

URL = os.environ.get("SD_WEBUI_URL", "").rstrip("/")
DATA_DIR = os.environ.get("SD_WEBUI_DATA_DIR", "")
AUTH_URL = os.environ.get("SD_WEBUI_AUTH_URL", "").rstrip("/")
AUTH_USER = os.environ.get("SD_WEBUI_AUTH_USER", "")
AUTH_PASSWORD = os.environ.get("SD_WEBUI_AUTH_PASSWORD", "")
CREDENTIALS = (AUTH_USER, AUTH_PASSWORD) if AUTH_USER and AUTH_PASSWORD else None
E2E_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before the mark plugin's own hook deselects by ``-m``
def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="SD_WEBUI_URL is not set: no live WebUI to test against")
    for item in items:
        if E2E_DIR not in Path(str(item.fspath)).resolve().parents:
            continue  # this hook sees the whole session's items, not only this folder's
        item.add_marker(pytest.mark.e2e)
        if not URL:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def webui():
    import httpx

    if not DATA_DIR:
        pytest.fail("SD_WEBUI_DATA_DIR must name the WebUI's --data-dir so the tests can create their banks")
    client = httpx.Client(base_url=URL, timeout=600, auth=CREDENTIALS)
    r = client.get("/sdapi/v1/scripts")
    assert r.status_code == 200, (
        f"GET /sdapi/v1/scripts: {r.status_code} {r.text[:200]} (--api-auth needs SD_WEBUI_AUTH_USER/PASSWORD)"
    )
    scripts = r.json()
    assert "safe denoiser" in scripts["txt2img"], "the extension is not loaded in this WebUI"
    return client


@pytest.fixture(scope="session")
def banks(tmp_path_factory):
    """A negation bank and a safe reference bank of random-noise pictures (any pictures do for plumbing)."""
    store = BankStore(Path(DATA_DIR) / STORE_SUBDIR)
    rng = np.random.default_rng(0)
    for name, n in (("e2e-unsafe", 4), ("e2e-reference", 6)):
        folder = tmp_path_factory.mktemp(name)
        for i in range(n):
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        store.add_folder(name, folder, overwrite=True)
    return {"bank": "e2e-unsafe", "reference": "e2e-reference"}
