"""The "Safe Denoiser" tab in a real headless Chromium: create a bank from uploads (one corrupt),
see the gallery and the skipped-file report, select and remove, encode, export, delete, import.

Set ``SAFE_DENOISER_SCREENSHOT=docs/bank_tab.png`` to save a screenshot of the tab with a bank open
(``make`` is not needed: ``SAFE_DENOISER_SCREENSHOT=docs/bank_tab.png python -m pytest tests/browser``).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser.app import STAND_IN_VAE

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
SCREENSHOT_ENV = "SAFE_DENOISER_SCREENSHOT"
TIMEOUT_MS = 60_000
QUIET_MS = 500
N_GOOD = 10


def picture(seed: int, size: int = 96) -> Image.Image:
    """A smooth, colourful picture (a few low-frequency waves), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = [0.5 + 0.45 * np.sin(2 * np.pi * (rng.uniform(0.3, 1.5) * xx + rng.uniform(0.3, 1.5) * yy)
                                    + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray((np.stack(channels, -1) * 255).round().astype(np.uint8))


def status(page) -> str:
    return page.locator("#safe_denoiser_tab_status").first.inner_text()


def wait_text(page, elem: str, text: str) -> None:
    """Wait for ``text`` in the element; a timeout says what the element showed instead."""
    element_id = f"safe_denoiser_tab_{elem}"
    try:
        page.wait_for_function("([id, t]) => (document.getElementById(id)?.innerText || '').includes(t)",
                               arg=[element_id, text], timeout=TIMEOUT_MS)
    except sync_api.TimeoutError:
        shown = page.evaluate("id => document.getElementById(id)?.innerText", element_id)
        raise AssertionError(f"#{element_id} never showed {text!r}; it shows {shown!r}") from None


def wait_status(page, text: str) -> str:
    """Wait for an event's answer, then for the events it starts (a new bank selected fetches its view)."""
    wait_text(page, "status", text)
    settle(page)
    return status(page)


def open_tab(page, label: str) -> None:
    page.locator("#safe_denoiser_tab_tabs button", has_text=label).first.click()


def fill(page, elem: str, text: str) -> None:
    page.locator(f"#safe_denoiser_tab_{elem}").locator("textarea, input").first.fill(text)


def settle(page) -> None:
    """Wait until no event has been pending on the page for ``QUIET_MS``.

    Loading the page can start more events (the bank list's value arrives, so the bank's view is
    fetched); those end at a time of the server's choosing.
    """
    page.wait_for_function("""quiet => {
        const busy = document.querySelector('.wrap.default:not(.hide), .wrap.center:not(.hide)');
        if (busy) { window.safeDenoiserQuietSince = null; return false; }
        window.safeDenoiserQuietSince ??= performance.now();
        return performance.now() - window.safeDenoiserQuietSince >= quiet;
    }""", arg=QUIET_MS, polling=50, timeout=TIMEOUT_MS)


def upload(page, elem: str, files: list[Path]) -> None:
    """Choose files and wait until gradio has sent them to the server.

    gradio 3.41 lists the files at once but uploads them in the background, and drops the upload's
    result if any event's answer re-renders the page meanwhile: the file box then stays "uploading"
    for ever, or a button pressed before the upload is done sends the files without their contents
    (a race of gradio's, not of the tab's). So the page must be quiet before and after.
    """
    box = f"#safe_denoiser_tab_{elem}"
    settle(page)
    with page.expect_response(lambda r: r.url.endswith("/upload"), timeout=TIMEOUT_MS):
        page.locator(f"{box} input[type=file]").set_input_files([str(f) for f in files])
    for f in files:  # gradio lists each file by name
        page.locator(box, has_text=f.name).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("sel => !document.querySelector(sel + ' .generating')", arg=box, timeout=TIMEOUT_MS)


def thumbnails(page):
    return page.locator("#safe_denoiser_tab_gallery .thumbnail-item")


def test_manage_a_bank_in_the_browser(page, tab_app, tmp_path):
    wait_text(page, "identity", "everyone is one anonymous user")
    files = []
    for i in range(N_GOOD):
        path = tmp_path / f"sample-{i}.png"
        picture(i).save(path)
        files.append(path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))

    # create: the corrupt file is reported by name, the good ones make the bank and its gallery
    open_tab(page, "Create")
    fill(page, "new_name", "browser-bank")
    fill(page, "new_tags", "test, samples")
    fill(page, "new_description", "Smooth test pictures")
    upload(page, "new_files", [*files, corrupt])
    page.click("#safe_denoiser_tab_create")
    text = wait_status(page, "Created")
    assert f"Created {N_GOOD} image(s) in bank 'browser-bank'" in text
    assert "Skipped corrupt.png" in text
    assert tab_app.store.get("browser-bank").n_images == N_GOOD
    open_tab(page, "Images")
    thumbnails(page).nth(N_GOOD - 1).wait_for(timeout=TIMEOUT_MS)
    assert thumbnails(page).count() == N_GOOD
    wait_text(page, "page_label", f"Page 1 of 1: images 1-{N_GOOD} of {N_GOOD}")

    # select two thumbnails by clicking, remove them
    for n, index in enumerate((1, 2), start=1):
        thumbnails(page).nth(index).click()
        page.wait_for_function("n => document.querySelectorAll('#safe_denoiser_tab_selected input:checked').length"
                               " == n", arg=n, timeout=TIMEOUT_MS)
    if os.environ.get(SCREENSHOT_ENV):  # the bank open, its skipped-file report, two images selected
        page.locator("#tab_safe_denoiser").screenshot(path=os.environ[SCREENSHOT_ENV])
    page.click("#safe_denoiser_tab_remove")
    wait_status(page, "Removed 2 image(s)")
    page.wait_for_function(f"() => document.querySelectorAll('#safe_denoiser_tab_gallery .thumbnail-item').length"
                           f" == {N_GOOD - 2}", timeout=TIMEOUT_MS)
    remaining = [e["source_name"] for e in tab_app.store.image_entries("browser-bank")]
    assert remaining == [f"sample-{i}.png" for i in range(N_GOOD) if i not in (1, 2)]

    # encode for a generation size, with progress; the cache table shows the new latents (keyed by the
    # bank's content: encoded after the removal, so they travel with the export)
    open_tab(page, "Latents")
    for elem, value in (("encode_width", "64"), ("encode_height", "64")):
        box = page.locator(f"#safe_denoiser_tab_{elem} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.click("#safe_denoiser_tab_encode")
    wait_status(page, "is encoded")
    assert f"Bank 'browser-bank' is encoded for {STAND_IN_VAE} at 64x64" in status(page)
    page.locator("#safe_denoiser_tab_cache_table", has_text=STAND_IN_VAE).wait_for(timeout=TIMEOUT_MS)
    assert tab_app.store.has_latents("browser-bank", STAND_IN_VAE, (8, 8))

    # export with latents and download the archive
    open_tab(page, "Import / export")
    page.click("#safe_denoiser_tab_export")
    wait_status(page, "Exported bank 'browser-bank'")
    link = page.locator("#safe_denoiser_tab_export_file a").first
    link.wait_for(timeout=TIMEOUT_MS)
    with page.expect_download() as download:
        link.click()
    archive = tmp_path / "downloaded.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert sum(n.startswith("images/") for n in names) == N_GOOD - 2
    assert any(n.startswith("latents/") for n in names)

    # delete: refused until confirmed
    open_tab(page, "Edit")
    page.click("#safe_denoiser_tab_delete")
    wait_status(page, "Tick 'Yes, delete browser-bank' first")
    assert tab_app.store.exists("browser-bank")
    page.locator("#safe_denoiser_tab_delete_confirm input[type=checkbox]").check()
    page.click("#safe_denoiser_tab_delete")
    wait_status(page, "Deleted bank 'browser-bank'")
    assert not tab_app.store.exists("browser-bank")

    # the downloaded archive brings it back, latents included
    open_tab(page, "Import / export")
    upload(page, "import_file", [archive])
    page.click("#safe_denoiser_tab_import")
    wait_status(page, f"Imported bank 'browser-bank' with {N_GOOD - 2} images")
    assert tab_app.store.has_latents("browser-bank", STAND_IN_VAE, (8, 8))
    assert page.locator("#safe_denoiser_tab_bank input").input_value() == "browser-bank"


def test_errors_are_answered_and_the_tab_keeps_working(page, tab_app, tmp_path):
    open_tab(page, "Create")
    fill(page, "new_name", "bad/name")
    path = tmp_path / "one.png"
    picture(42).save(path)
    upload(page, "new_files", [path])
    page.click("#safe_denoiser_tab_create")
    wait_status(page, "looks like a path")
    fill(page, "new_name", "good-name")
    page.click("#safe_denoiser_tab_create")
    wait_status(page, "Created 1 image(s) in bank 'good-name'")

