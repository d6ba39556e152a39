"""Text concepts steering real jobs on the stand-in WebUI, alone and beside a bank, judged by a real
(random-weight, tiny) open_clip model through the model's own VAE decoder."""

from __future__ import annotations

import pytest
import torch
from modules import shared

from lib_safe_denoiser.concepts.args import KEY_CONCEPTS, KEY_GAMMA, KEY_MODEL, KEY_TRIGGERED
from lib_safe_denoiser.generation.infotext import KEY_BANK, KEY_ERROR
from safe_denoiser_webui import concepts as glue_concepts
from tests.concepts.tiny_models import TINY_CLIP
from tests.glue import harness

CONCEPTS = {"concepts": "a cat, fire", "concept_eta": 0.0, "concept_gamma": 50.0}
"""With the seeded random judge below, these concepts score above 0 on the stand-in's images."""


@pytest.fixture
def tiny_clip(glue, monkeypatch):
    """The settings name the tiny random-weight CLIP (registered by tests.concepts.tiny_models)."""
    monkeypatch.setitem(shared.opts.data, glue_concepts.OPT_CLIP_MODEL, TINY_CLIP)
    monkeypatch.setitem(shared.opts.data, glue_concepts.OPT_CLIP_PRETRAINED, "")
    torch.manual_seed(0)  # the random weights, the same every run
    glue_concepts.JUDGES.get(TINY_CLIP, "", device=torch.device("cpu"))
    yield
    glue_concepts.JUDGES.release()


def images(job: harness.JobResult) -> torch.Tensor:
    return torch.stack(job.images)


def test_concepts_alone_steer_every_triggered_sample_and_say_so(script, glue, tiny_clip):
    plain = harness.run_job(script, [], steps=4)
    job = harness.run_job(script, [{"enabled": True, **CONCEPTS}], steps=4)
    info = job.p.extra_generation_params
    assert KEY_ERROR not in info and len(job.images) == 2
    assert not torch.equal(images(plain), images(job))
    assert KEY_BANK not in info, "no bank: the bank correction is off"
    assert info[KEY_CONCEPTS] == "a cat, fire" and info[KEY_GAMMA] == "50"
    assert info[KEY_MODEL].startswith(TINY_CLIP)
    triggered = info[KEY_TRIGGERED].split(",")
    assert len(triggered) == 4 and triggered[0] == "2", "judged at each of the 4 steps; both samples at the first"


def test_untriggered_samples_are_bit_identical_to_an_unsteered_job(script, glue, tiny_clip):
    plain = harness.run_job(script, [], steps=4)
    job = harness.run_job(script, [{"enabled": True, **CONCEPTS, "concept_eta": 0.999}], steps=4)
    assert torch.equal(images(plain), images(job))
    assert job.p.extra_generation_params[KEY_TRIGGERED] == "0,0,0,0"


def test_a_bank_and_concepts_steer_one_job_each_in_its_window(script, glue, tiny_clip):
    bank_only = {"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "constant", "strength": 1.0,
                 "window_start": 0.0, "window_end": 1.0}
    alone = harness.run_job(script, [bank_only], steps=4)
    both = harness.run_job(script, [{**bank_only, **CONCEPTS, "concept_window_start": 0.5,
                                     "concept_window_end": 1.0}], steps=4)
    info = both.p.extra_generation_params
    assert info[KEY_BANK] == "unsafe" and info["Safe denoiser acted"] == "4/4"
    judged = info[KEY_TRIGGERED].split(",")
    assert 0 < len(judged) < 4 and any(n != "0" for n in judged), "judged only in their window (the later steps)"
    assert not torch.equal(images(alone), images(both))


def test_a_clip_model_that_cannot_load_refuses_the_job(script, glue, monkeypatch):
    monkeypatch.setitem(shared.opts.data, glue_concepts.OPT_CLIP_MODEL, "no-such-clip")
    job = harness.run_job(script, [{"enabled": True, **CONCEPTS}], steps=2)
    assert job.images == [] and "unknown CLIP model 'no-such-clip'" in job.p.extra_generation_params[KEY_ERROR]


def test_concepts_leave_the_hires_pass_alone_when_hires_steering_is_off(script, glue, tiny_clip, monkeypatch):
    on = harness.run_job(script, [{"enabled": True, **CONCEPTS}], steps=4, hires_hw=(16, 16))
    assert len(on.p.extra_generation_params[KEY_TRIGGERED].split(",")) > 4, "both passes judged"
    monkeypatch.setitem(shared.opts.data, glue.OPT_STEER_HIRES, False)
    off = harness.run_job(script, [{"enabled": True, **CONCEPTS}], steps=4, hires_hw=(16, 16))
    info = off.p.extra_generation_params
    assert KEY_ERROR not in info and len(off.images) == 2
    assert len(info[KEY_TRIGGERED].split(",")) == 4, "judged on the 4 steps of the first pass only"
