"""The paper mode carries its correction into the sampler's state on the samplers the carry supports.

The oracle re-derives every call's prediction from what the probe saw, with the formulas of the
official loop's state replacement written out here (not core/carry.py's code): the step's first
call moves the next state by the whole correction, re-noised, through the factor
sigma / (sigma - sigma_next); Heun's second call adds the rest; other samplers get the plain
correction.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from modules import sd_samplers_timesteps_impl as timesteps_impl
from modules import shared
from PIL import Image

from lib_safe_denoiser.generation.infotext import KEY_ERROR, KEY_MODE
from tests.glue import harness, oracle
from tests.glue.carry_oracle import TOLERANCE, carried_predictions
from tests.glue.conftest import last_job

PAPER = [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "paper", "strength": 0.33,
          "bandwidth": 3.15, "gate": False, "window_start": 0.0, "window_end": 0.5}]


@pytest.mark.parametrize("sampler", ["euler", "ddim", "heun"])
def test_each_call_moves_the_state_as_the_official_replacement(script, glue, sampler):
    probe = harness.Probe()
    res = harness.run_job(script, PAPER, sampler=sampler, steps=10, probe=probe)
    assert KEY_ERROR not in res.p.extra_generation_params
    safe = oracle.job_denoiser(glue)
    pairs = carried_predictions(probe.calls, safe, steps=10, heun=sampler == "heun")
    for returned, expected in pairs:
        torch.testing.assert_close(returned, expected, **TOLERANCE)
    beyond = [not torch.allclose(oracle.expected_x0(call, safe)[1], returned, atol=1e-2)
              for call, (returned, _) in zip(probe.calls, pairs, strict=True)]
    assert sum(beyond) >= 3, "the window's steps moved the state by more than the plain correction"


def test_samplers_without_a_carry_get_the_plain_correction(script, glue):
    """DDIM CFG++ steps along the uncond eps it keeps: not carried."""
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=12.5)
    harness.run_job(script, PAPER, sampler="ddim_cfgpp", steps=10, p=p, probe=probe)
    assert oracle.assert_every_call_corrected(probe.calls, oracle.job_denoiser(glue)) > 0


def test_plms_carries_its_first_step_as_heun_and_keeps_carrying_after_the_window(script, glue):
    """PLMS's first step has two calls (the second completes the first's carry, as Heun's); after the
    window its extrapolation still holds earlier changes, which the next calls cancel."""
    probe = harness.Probe()
    harness.run_job(script, PAPER, sampler="plms", steps=10, probe=probe)
    safe = oracle.job_denoiser(glue)
    first_step = carried_predictions(probe.calls[:2], safe, steps=10, heun=True)
    for returned, expected in first_step:
        torch.testing.assert_close(returned, expected, **TOLERANCE)
    outside = [c for c in probe.calls if torch.equal(*oracle.expected_x0(c, safe))]
    assert outside, "the window closes before the end"
    assert not torch.allclose(oracle.to_x0(outside[0], outside[0].x_in[-2:], outside[0].denoised),
                              oracle.expected_x0(outside[0], safe)[0], atol=1e-4), "the first call after it cancels"


def test_a_carried_job_is_reproducible(script, glue):
    first = harness.run_job(script, PAPER, sampler="euler", steps=10)
    again = harness.run_job(script, PAPER, sampler="euler", steps=10)
    plain = harness.run_job(None, [], sampler="euler", steps=10)
    assert torch.equal(first.samples, again.samples)
    assert not torch.allclose(first.samples, plain.samples, atol=1e-3)


UNIT = 50
"""A prompt that draws a uniform picture whose latent has a unit channel vector at every position."""
UNIT_RGB = (14, 14, 241)
"""0.5 + 0.89 * ((0, 0, 1) - 0.5): the stand-in VAE maps it to channel vectors of norm ~1, the official
recipe's bank geometry, where the calibrated gate can open for a prediction of the bank's picture."""


@pytest.fixture(scope="module")
def unit_bank(glue, banks, tmp_path_factory):
    harness.PICTURES[UNIT] = Image.new("RGB", (64, 64), UNIT_RGB)
    folder = tmp_path_factory.mktemp("unit-bank")
    rng = np.random.default_rng(1)
    base = np.asarray(harness.PICTURES[UNIT], dtype=np.float32)
    for i in range(6):
        jittered = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(jittered).save(folder / f"u{i}.png")
    glue.STORE.add_folder("unit", folder)
    yield "unit"
    glue.STORE.delete("unit")  # the other glue tests see the session's two banks only
    del harness.PICTURES[UNIT]


def test_the_default_recipes_gate_carries_only_the_rows_it_opened_for(script, glue, unit_bank):
    """Image 0 draws the bank's picture, image 1 a safe one: the calibrated gate opens for image 0
    only, and only image 0's prediction is carried and re-noised."""
    probe = harness.Probe()
    res = harness.run_job(script, [True, unit_bank], prompts=[[(UNIT, 1.0)], [(harness.SAFE[0], 1.0)]], probe=probe)
    info = res.p.extra_generation_params
    assert (info[KEY_MODE], info["Safe denoiser preset"]) == ("paper", "nudity (SD 1.x)")
    assert len(res.images) == 2 and KEY_ERROR not in info
    window = [i for i, s in enumerate(last_job(glue).trace.steps) if s.acted]
    assert window and max(window) < 3, "DDPM t >= 780: the first three of 10 Euler steps"
    safe = oracle.job_denoiser(glue)
    carried = 0
    for call, (returned, expected) in zip(probe.calls, carried_predictions(probe.calls, safe, steps=10, heun=False),
                                          strict=True):
        torch.testing.assert_close(returned, expected, **TOLERANCE)
        unsteered = oracle.expected_x0(call, safe)[0]
        torch.testing.assert_close(returned[1], unsteered[1], rtol=0, atol=1e-5)
        carried += int(not torch.allclose(returned[0], unsteered[0], atol=1e-2))
    assert carried > 0


def unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    """The signature of modules/sd_samplers_timesteps_impl.unipc (the glue reads its name and parameters)."""
    raise AssertionError("not sampled: only its name and signature are read")


@pytest.mark.parametrize("func, eta, expected", [
    (timesteps_impl.ddim, 0.5, ("step", 0.5)),  # DDIM takes its eta
    (timesteps_impl.ddim, None, ("step", 0.0)),
    (harness.sample_euler, 0.5, ("step", 0.0)),  # the WebUI sets eta for every sampler; Euler ignores it
    (harness.sample_heun, 1.0, ("heun", 0.0)),
    (timesteps_impl.plms, 1.0, ("plms", 0.0)),
    (timesteps_impl.ddim_cfgpp, 0.3, (None, 0.3)),
    (unipc, 0.5, ("unipc", 0.0)),
])
def test_the_glue_reads_the_samplers_carry_kind_and_eta(glue, func, eta, expected):
    den = SimpleNamespace(sampler=SimpleNamespace(func=func, eta=eta), p=SimpleNamespace(seeds=[7, 8], seed=3))
    assert glue._sampler_carry(den) == (*expected, 7, (3, "bh1", True)), "the batch's first seed"
    den.p = SimpleNamespace(seed=3)
    assert glue._sampler_carry(den)[2] == 3


@pytest.mark.parametrize("settings, expected", [
    ({"uni_pc_order": 2, "uni_pc_variant": "bh2", "uni_pc_lower_order_final": False}, ("unipc", (2, "bh2", False))),
    ({"uni_pc_variant": "vary_coeff"}, (None, (3, "vary_coeff", True))),  # a variant the carry does not model
])
def test_the_glue_reads_unipcs_settings(glue, monkeypatch, settings, expected):
    from modules import shared

    for key, value in settings.items():
        monkeypatch.setitem(shared.opts.data, key, value)
    den = SimpleNamespace(sampler=SimpleNamespace(func=unipc, eta=None), p=SimpleNamespace(seeds=[7]))
    kind, _, _, options = glue._sampler_carry(den)
    assert (kind, options) == expected

