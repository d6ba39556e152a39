"""Browser tests: the real tab in a small gradio app on 127.0.0.1, driven in a headless Chromium.

Needs the ``playwright`` package and a Chromium binary (``$CHROMIUM``, else ``chromium`` or
``chromium-browser`` on the PATH; Debian: ``apt-get install chromium``); Playwright's own browser
download is never used. Without a binary the tests are skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lib_safe_denoiser.banks.store import BankStore
from tests.browser.app import STORE_DIR

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10

BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1100}
ENCODE_DELAY_S = 0.05
"""Per batch of the stand-in VAE: long enough for the progress bar to show, short for the test."""


def chromium_binary() -> str | None:
    """$CHROMIUM, or the first chromium on the PATH."""
    given = os.environ.get("CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TabApp:
    url: str
    store: BankStore


@pytest.fixture(scope="module")
def tab_app(tmp_path_factory) -> Iterator[TabApp]:
    """The app in its own process (``python -m tests.browser.app``): stopping it never waits on the
    browser's open connections, and its gradio state stays apart from the other tests'."""
    root = tmp_path_factory.mktemp("tab-app")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
    log = (root / "app.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "tests.browser.app", "--port", str(port), "--data", str(root),
                               "--encode-delay", str(ENCODE_DELAY_S)], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, server, root / "app.log")
        yield TabApp(url, BankStore(root / STORE_DIR))
    finally:
        server.terminate()
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the tab app exited with {server.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the tab app did not answer at {url} within {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary found: install it (Debian: apt-get install chromium) or set $CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=BROWSER_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, tab_app):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    pg.goto(tab_app.url, timeout=60_000)
    pg.wait_for_selector("#safe_denoiser_tab_bank", timeout=60_000)
    # the load event has answered: nothing redraws the page under the test's first upload
    pg.wait_for_function("() => (document.getElementById('safe_denoiser_tab_identity')?.innerText || '').trim()",
                         timeout=60_000)
    yield pg
    context.close()
