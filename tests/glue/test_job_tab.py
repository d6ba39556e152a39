"""The diagnostics panel of the tab a job ran on. The WebUI's processing objects have no ``is_img2img``
(modules/processing.py v1.10.1); what knows the tab is the Script instance: ScriptRunner.initialize_scripts
makes one per tab and sets its ``is_img2img``."""

from __future__ import annotations

import pytest
from modules import shared

from tests.glue import harness

NO_JOB = "No generation with the safe denoiser yet."


@pytest.mark.parametrize("is_img2img", [False, True])
def test_a_job_shows_on_the_panel_of_the_tab_it_ran_on(glue, script, is_img2img):
    script.is_img2img = is_img2img  # the tab's own Script instance, as the WebUI's runner sets it
    p = harness.Processing(sd_model=shared.sd_model)  # like the WebUI's p, it does not say its tab
    harness.run_job(script, [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "constant"}], p=p)
    assert glue.diagnostics(is_img2img)[0].startswith("Bank **")
    assert glue.diagnostics(not is_img2img)[0] == NO_JOB
