"""What a job leaves for the user: the diagnostics panel, the progress text while a bank is
encoded, the callbacks' names in the WebUI, and one record per batch."""

from __future__ import annotations

import numpy as np
import pytest
from modules import errors, script_callbacks, shared
from PIL import Image

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_ERROR
from tests.glue import harness
from tests.glue.conftest import last_job, our_callbacks
from tests.glue.test_samplers import odds

SHOWN = 4
"""Nearest bank images the panel shows at most."""
SIX_OF_THE_BANKS_PICTURE = [[(harness.UNSAFE, 1.0)]] * 6
"""Six images asking for picture 1: their noisy latents land near different copies in a bank of copies."""


def summary_line(job) -> str:
    s = job.trace.summary()
    (bank,) = job.banks
    return (f"Bank **{bank.name}** ({bank.short_hash}), mode {job.args.mode}: acted on "
            f"{s.acted_steps}/{s.total_steps} steps, max beta {s.max_beta:.3g}.")


@pytest.fixture
def jittered_bank(glue, tmp_path):
    """A bank of its own ("jittered", copies of picture 1), removed afterwards."""
    base = np.asarray(harness.PICTURES[harness.UNSAFE], dtype=np.float32)
    rng = np.random.default_rng(5)

    def make(count: int, overwrite: bool = False) -> None:
        folder = tmp_path / f"jittered-{count}"
        folder.mkdir(exist_ok=True)
        for i in range(count):
            img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
        glue.STORE.add_folder("jittered", folder, overwrite=overwrite)

    yield make
    if glue.STORE.exists("jittered"):
        glue.STORE.delete("jittered")


def test_the_panel_summarises_the_last_job_and_shows_its_nearest_bank_images(script, glue, jittered_bank):
    jittered_bank(8)
    res = harness.run_job(script, odds(bank="jittered"), prompts=SIX_OF_THE_BANKS_PICTURE)
    job = last_job(glue)
    text, plot, nearest = glue.diagnostics(False)
    assert text == summary_line(job) and KEY_ERROR not in res.p.extra_generation_params
    paths = glue.STORE.image_paths("jittered")
    assert len(job.trace.nearest) > SHOWN, "more distinct nearest images than the panel shows"
    assert nearest == [str(paths[i]) for i in job.trace.nearest_indices(SHOWN)]
    assert plot.size[0] > 100
    assert glue.diagnostics(True)[0] == "No generation with the safe denoiser yet.", "the other tab's panel"


def test_nearest_images_of_a_bank_that_changed_or_went_away(script, glue, jittered_bank):
    jittered_bank(2)
    harness.run_job(script, odds(bank="jittered"), prompts=SIX_OF_THE_BANKS_PICTURE)
    job = last_job(glue)
    assert sorted(job.trace.nearest_indices(SHOWN)) == [0, 1]
    jittered_bank(1, overwrite=True)  # the bank now holds one image: index 1 is gone
    assert glue.diagnostics(False)[2] == [str(glue.STORE.image_paths("jittered")[0])]
    glue.STORE.delete("jittered")
    text, _, nearest = glue.diagnostics(False)
    assert nearest == [] and text == summary_line(job)


def test_the_panel_shows_the_error_and_no_plot_without_steps(script, glue, monkeypatch):
    monkeypatch.setattr(harness, "CHANNELS", 16)  # the bank cannot serve this model: no step is steered
    harness.run_job(script, odds())
    job = last_job(glue)
    text, plot, nearest = glue.diagnostics(False)
    assert job.trace.steps == [] and plot is None and nearest == []
    assert text == summary_line(job) + f"\n\nError: {job.error}" and "another model family" in job.error


def test_a_failing_callback_is_reported_once_and_steers_nothing_more(script, glue, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    from lib_safe_denoiser.generation import steering

    monkeypatch.setattr(steering.Steering, "steer_outputs_", broken)
    res = harness.run_job(script, odds())
    job = last_job(glue)
    assert job.error == "steering failed: boom" == res.p.extra_generation_params[KEY_ERROR]
    assert job.trace.steps == [], "on_cfg_after_cfg does not correct a step of a failed job"
    assert glue.diagnostics(False)[0].endswith("\n\nError: steering failed: boom")


def test_encoding_progress_and_batch_size_come_from_the_settings(script, glue, monkeypatch):
    seen = []
    latents = glue.STORE.latents

    def recording(name, **kwargs):
        seen.append(kwargs["batch_size"])
        return latents(name, **kwargs)

    monkeypatch.setattr(glue.STORE, "latents", recording)
    monkeypatch.setitem(shared.opts.data, glue.OPT_ENCODE_BATCH, 5)
    harness.run_job(script, odds(), hw=(7, 7))  # a size no test encoded before
    assert seen == [5, 5], "the bank and the reference bank"
    assert shared.state.textinfo == "Safe denoiser: encoding bank images 8/8", "the reference bank's last batch"


def test_a_disabled_job_runs_no_hook_that_fails(script, glue):
    errors.reported.clear()
    res = harness.run_job(script, [False])
    assert errors.reported == [] and len(res.images) == 2


def test_callbacks_are_registered_under_the_extensions_name(script, glue):
    seen = []

    def look(params):
        seen.append(our_callbacks(glue))

    script_callbacks.on_cfg_denoiser(look, name="watch")
    try:
        harness.run_job(script, odds(), steps=2)
    finally:
        script_callbacks.remove_callbacks_for_function(look)
    names = ["cfg_denoiser/safe_denoiser", "cfg_denoised/safe_denoiser", "cfg_after_cfg/safe_denoiser"]
    assert seen == [names, names]


def test_every_batch_is_steered_and_recorded_on_its_own(script, glue):
    res = harness.run_job(script, odds(), n_iter=2)
    assert len(res.images) == 4 and len(res.infotexts) == 2
    assert [info[KEY_ACTED].split("/")[1] for info in res.infotexts] == ["10", "10"], "a new trace per batch"
