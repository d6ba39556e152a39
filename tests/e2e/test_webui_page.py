"""The accordion in the WebUI page, in a real headless Chromium driven by Playwright.

Needs ``pip install playwright`` and a Chromium (``$CHROMIUM``, default /usr/bin/chromium); the
browser is not downloaded. Skipped like the rest of tests/e2e when SD_WEBUI_URL is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import CREDENTIALS, URL

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(webui):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (set $CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1800})
        pg.goto(URL + "/", timeout=120_000)
        pg.wait_for_selector("input[type=password], #script_txt2img_safe_denoiser_enabled", timeout=120_000)
        if CREDENTIALS and pg.locator("input[type=password]").count():  # --gradio-auth: its login form first
            pg.locator("input[type=text]").first.fill(CREDENTIALS[0])
            pg.locator("input[type=password]").first.fill(CREDENTIALS[1])
            pg.get_by_role("button", name="Login").click()
        pg.wait_for_selector("#script_txt2img_safe_denoiser_enabled", timeout=120_000)
        yield pg
        browser.close()


def _number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def _choose(page, elem: str, choice: str) -> None:
    """Pick ``choice``: the focus event refreshes the choices from the server, and the dropdown filters
    them as text is typed, so type again until the refreshed choice is listed, focusing again now and
    then (a WebUI's first events can take long on a busy machine: up to a minute)."""
    box = page.locator(f"#script_txt2img_safe_denoiser_{elem} input")
    option = page.locator(f"#script_txt2img_safe_denoiser_{elem} ul.options li", has_text=choice).first
    for attempt in range(120):
        if attempt % 10 == 0:  # focus again now and then: a refresh answered before the choice existed is redone
            page.locator("#txt2img_prompt textarea").click()
            box.click()
        box.fill(choice)
        if option.count():
            break
        page.wait_for_timeout(500)
    option.click()


def test_accordion_enables_steers_and_shows_diagnostics(page, banks, tmp_path):
    checkbox = page.locator("#script_txt2img_safe_denoiser_enabled-checkbox input")
    accordion = page.locator("#script_txt2img_safe_denoiser_enabled")
    assert not checkbox.is_checked()
    accordion.locator(".label-wrap").first.click()
    page.wait_for_timeout(300)
    assert checkbox.is_checked(), "opening the accordion enables the extension"

    page.fill("#txt2img_prompt textarea", "a red apple")
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "6")):
        _number(page, elem_id, value)
    _choose(page, "bank", banks["bank"])
    _choose(page, "preset", "a person / memorised image")
    strength = page.locator("#script_txt2img_safe_denoiser_strength input[type=number]")
    for _ in range(60):  # the preset's numbers arrive by a server round trip: slow on a busy machine
        if strength.input_value() == "0.69":
            break
        page.wait_for_timeout(500)
    assert strength.input_value() == "0.69"

    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img:last-of-type')"
                           " && document.body.innerText.includes('Safe denoiser acted')", timeout=120_000)
    info = page.locator("#html_info_txt2img").last.inner_text()
    assert f"Safe denoiser: {banks['bank']}" in info and "Safe denoiser preset: a person / memorised image" in info

    accordion.get_by_text("Diagnostics of the last generation", exact=True).first.click()
    page.click("#script_txt2img_safe_denoiser_show_diagnostics")
    page.wait_for_function("() => document.body.innerText.includes('acted on')", timeout=60_000)
    page.locator("#script_txt2img_safe_denoiser_plot img").wait_for(timeout=60_000)
    accordion.screenshot(path=str(tmp_path / "accordion.png"))
