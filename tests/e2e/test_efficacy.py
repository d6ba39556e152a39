"""The extension removes a concept through the real WebUI: the tiny digits checkpoint, a bank of one digit.

Skipped unless the WebUI at SD_WEBUI_URL has ``tiny-digits-sd15`` loaded (``python -m tools.tiny_sd.train``, then
docs/efficacy.md). Small N keeps it quick; ``benchmarks/efficacy_report.py`` measures the full table. The banks
are made over the extension's REST routes (so the WebUI's VAE encodes them) and deleted afterwards.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import CREDENTIALS, URL
from tools.tiny_sd.config import CHECKPOINT_NAME
from tools.tiny_sd.efficacy import ROUTES, Client, all_rows, contact_sheet, make_banks, run_cell

DIGIT = 7
N_TXT2IMG = 100
N_IMG2IMG = 10


@pytest.fixture(scope="module")
def setup():
    from tools.tiny_sd.digits64 import DigitReader

    client = Client(URL, CREDENTIALS)
    if CHECKPOINT_NAME.rsplit(".", 1)[0] not in client.loaded_checkpoint():
        pytest.skip(f"the WebUI has not loaded {CHECKPOINT_NAME} (docs/efficacy.md)")
    banks = make_banks(client, DIGIT, prefix="e2e-efficacy")
    yield client, DigitReader(), banks
    for name in (banks.negated, banks.reference):
        client.call("DELETE", f"{ROUTES}/banks/{name}")


def test_txt2img_odds_removes_the_digit(setup):
    client, reader, banks = setup
    cell = run_cell(client, reader, banks, all_rows()["Euler a"], "odds", N_TXT2IMG)
    assert cell.share_plain >= 0.02, f"the checkpoint samples too few {DIGIT}s to measure: {cell.plain}"
    assert cell.share_steered <= cell.share_plain / 2, (cell.plain, cell.steered)
    assert cell.tv_others <= 0.2, (cell.plain, cell.steered)
    assert len(cell.negated_steered) == round(cell.share_steered * cell.n), "the remaining pictures are kept"
    assert contact_sheet(cell.negated_steered).size == (2 * 64 * max(1, len(cell.negated_steered)), 2 * 64)


def test_img2img_from_the_digit_odds(setup):
    client, reader, banks = setup
    cell = run_cell(client, reader, banks, all_rows()["img2img 0.75"], "odds", N_IMG2IMG)
    assert cell.share_plain >= 0.1, f"img2img at 0.75 from a {DIGIT} should often keep it unsteered: {cell.plain}"
    assert cell.share_steered < cell.share_plain, (cell.plain, cell.steered)
    assert cell.share_steered <= 0.1, (cell.plain, cell.steered)
