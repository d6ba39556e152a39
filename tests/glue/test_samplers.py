"""Every sampler, both model parametrisations: each CFG call is the correction of the WebUI's own
prediction, each image moves the right way, and the live preview carries the correction."""

from __future__ import annotations

import pytest
import torch
from modules import shared

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_ERROR
from tests.glue import harness, oracle

PARAMETRISATIONS = ("eps", "v")
AND_PROMPTS = [[(1, 0.7), (2, 0.5)], [(2, 1.0)]]
"""Image 0: the bank's picture AND a safe one (weights summing to 1.2); image 1: the safe picture."""
CFG = 7.0
CFGPP_CFG = 12.5
"""DDIM CFG++ divides the CFG scale by 12.5: this gives it an effective scale of 1."""
FAITHFUL_CFG = {"ddim_cfgpp": CFGPP_CFG}
"""The scale at which each sampler draws the prompt's own picture (1, the model's prediction, by default;
with the stand-in's grey uncond, CFG 7 extrapolates far past every picture)."""

EITHER_AND_SAFE = [[(harness.EITHER, 1.0)], [(harness.SAFE[0], 1.0)]]
"""Image 0 draws the bank's picture (almost always) or a safe one; image 1 a safe picture."""
DIRECTION_STEPS = {"plms": 30}
"""Steps each sampler needs to follow this toy model once the correction switches on (10 by default):
PLMS extrapolates eps over its last four steps and, below 25 steps here, overshoots past every picture."""
AWAY = 5.0
"""How much farther from the bank image 0 must end up (it starts under 2.5 from it, the pictures lie ~9 apart)."""
DRIFT = 0.1
"""How far image 1 (a safe picture far from the bank) may drift towards the bank or from the safe set."""


def odds(**extra):
    return [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "odds", "strength": 1.0,
             "reference_bank": "reference", "window_start": 0.0, "window_end": 1.0, **extra}]


def constant(strength: float = 0.5):
    """The constant mode changes a prediction by strength * (D - E_u): any error in the D the glue
    reconstructs (scale, AND weights, skipped uncond) shows in the result."""
    return [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "constant", "strength": strength,
             "window_start": 0.0, "window_end": 1.0}]


def model_for(parameterization: str) -> harness.TinyModel:
    """SD 1.x predicts eps; SD 2.x 768-v predicts v."""
    if parameterization == "v":
        return harness.TinyModel(parameterization="v", is_sd1=False, is_sd2=True)
    return harness.TinyModel()


def cfg_for(sampler: str) -> float:
    return CFGPP_CFG if sampler == "ddim_cfgpp" else CFG


def nearest_distance(glue, samples: torch.Tensor, bank: str, columns: slice = slice(None)) -> torch.Tensor:
    """Per sample, the distance to the nearest latent of ``bank``, over the latent ``columns``."""
    lat = glue.STORE.latents(bank, encoder=glue.encoder_for(shared.sd_model), vae_id=glue.vae_id(shared.sd_model),
                             latent_hw=tuple(samples.shape[-2:]))
    return torch.cdist(samples[..., columns].flatten(1), lat[..., columns].flatten(1)).min(dim=1).values


def assert_each_image_moved_the_right_way(glue, plain: torch.Tensor, steered: torch.Tensor,
                                          columns: slice = slice(None)) -> None:
    """Image 0 made the bank's picture without the extension: with it, it ends far from the bank and
    nearer the safe set. Image 1 made a safe picture: it neither nears the bank nor leaves the safe set."""
    bank_before, bank_after = (nearest_distance(glue, x, "unsafe", columns) for x in (plain, steered))
    safe_before, safe_after = (nearest_distance(glue, x, "reference", columns) for x in (plain, steered))
    assert bank_after[0] > bank_before[0] + AWAY, (bank_before, bank_after)
    assert safe_after[0] < safe_before[0], (safe_before, safe_after)
    assert bank_after[1] > bank_before[1] - DRIFT, (bank_before, bank_after)
    assert safe_after[1] < safe_before[1] + DRIFT, (safe_before, safe_after)


@pytest.mark.parametrize("parameterization", PARAMETRISATIONS)
@pytest.mark.parametrize("sampler", harness.SAMPLERS)
def test_each_call_is_the_correction_of_the_webuis_prediction(script, glue, sampler, parameterization):
    shared.sd_model = model_for(parameterization)
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=cfg_for(sampler))
    res = harness.run_job(script, constant(), sampler=sampler, prompts=AND_PROMPTS, p=p, probe=probe)
    assert KEY_ERROR not in res.p.extra_generation_params and len(res.images) == 2
    safe = oracle.job_denoiser(glue)
    changed = oracle.assert_every_call_corrected(probe.calls, safe)
    assert changed == len(probe.calls), "the constant mode changes every prediction in its window"
    steps = len(harness._timesteps(10)) - 1 if sampler in harness.TIMESTEP_SAMPLERS else 10  # DDIM, PLMS: 9 of 10
    assert res.p.extra_generation_params[KEY_ACTED] == f"{steps}/{steps}", "sampling steps, not model calls"


@pytest.mark.parametrize("parameterization", PARAMETRISATIONS)
@pytest.mark.parametrize("sampler", harness.SAMPLERS)
def test_each_image_moves_the_right_way(script, glue, sampler, parameterization):
    shared.sd_model = model_for(parameterization)
    cfg, steps = FAITHFUL_CFG.get(sampler, 1.0), DIRECTION_STEPS.get(sampler, 10)
    plain = harness.run_job(None, [], sampler=sampler, steps=steps, prompts=EITHER_AND_SAFE,
                            p=harness.Processing(sd_model=shared.sd_model, cfg_scale=cfg))
    steered = harness.run_job(script, odds(), sampler=sampler, steps=steps, prompts=EITHER_AND_SAFE,
                              p=harness.Processing(sd_model=shared.sd_model, cfg_scale=cfg))
    assert torch.isfinite(steered.samples).all()
    assert_each_image_moved_the_right_way(glue, plain.samples, steered.samples)


def test_the_stand_ins_combination_agrees_with_the_oracle(script, glue):
    """At CFG 7 with AND weights, the WebUI's unsteered prediction the oracle reconstructs is the
    stand-in CFG denoiser's own combination of the rows the model returned."""
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=CFG)
    harness.run_job(script, constant(), prompts=AND_PROMPTS, p=p, probe=probe)
    for call in probe.calls:
        n = len(call.conds_list)
        own = call.denoiser.combine_denoised(call.rows_before, call.conds_list, call.rows_before[-n:], CFG)
        torch.testing.assert_close(call.denoised - oracle.row_change(call), own, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim"])
@pytest.mark.parametrize("skip", ["early", "ngms", "ngms all steps"])
def test_skipped_uncond_steps_use_the_scale_the_webui_used(script, glue, monkeypatch, sampler, skip):
    """Where the WebUI skips the uncond pass it combines with scale 1 (fake uncond rows): with
    two AND-subprompts on image 0 the scale matters, and every call must still be the oracle's."""
    timesteps = sampler in harness.TIMESTEP_SAMPLERS
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=5.0)
    if skip == "early":
        monkeypatch.setitem(shared.opts.data, "skip_early_cond", 0.3)  # step 3 of 10 is exactly 0.3
    else:
        # at the bounds of the comparison: 1 (the smallest s_min that counts) and a timestep DDIM visits
        p.s_min_uncond = 501.0 if timesteps else 1.0  # DDIM compares its DDPM timestep, as the WebUI does
        monkeypatch.setitem(shared.opts.data, "s_min_uncond_all", skip == "ngms all steps")
    probe = harness.Probe()
    res = harness.run_job(script, constant(), sampler=sampler, prompts=AND_PROMPTS, p=p, probe=probe)
    info = res.p.extra_generation_params
    assert ("Skip Early CFG" if skip == "early" else "NGMS") in info, "the WebUI skipped some uncond passes"
    assert KEY_ERROR not in info
    oracle.assert_every_call_corrected(probe.calls, oracle.job_denoiser(glue))


@pytest.mark.parametrize("content", ["Prompt", "Negative prompt", "Combined"])
@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_live_preview_carries_the_correction(script, glue, monkeypatch, sampler, content):
    """Each preview is the one the WebUI shows for these inputs, moved by exactly the correction."""
    monkeypatch.setitem(shared.opts.data, "live_preview_content", content)
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=CFG)
    # the WebUI picks the combined images by cond row index, which is only the image's index without AND
    prompts = EITHER_AND_SAFE if content == "Combined" else AND_PROMPTS
    harness.run_job(script, odds(), sampler=sampler, prompts=prompts, p=p, probe=probe)
    safe = oracle.job_denoiser(glue)
    moved = 0
    for call in probe.calls:
        unsteered, expected = oracle.expected_x0(call, safe)
        n, first = len(call.conds_list), oracle.first_cond_rows(call)
        if content == "Prompt":
            base = oracle.to_x0(call, call.x_in[first], call.rows_before[first])
        elif content == "Negative prompt":
            base = oracle.to_x0(call, call.x_in[-n:], call.rows_before[-n:])
        else:
            base = unsteered
        torch.testing.assert_close(call.preview, base + (expected - unsteered), **oracle.TOLERANCE)
        moved += int(not torch.allclose(expected, unsteered, rtol=0, atol=1e-3))
    assert moved > 0


def test_ddim_cfgpp_direction_term_is_steered(script, glue):
    """CFG++ steps along the uncond eps it keeps after on_cfg_denoised: it must carry the correction."""
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=FAITHFUL_CFG["ddim_cfgpp"])
    harness.run_job(script, odds(), sampler="ddim_cfgpp", p=p, probe=probe)
    moved = 0
    for call in probe.calls:
        n = len(call.conds_list)
        torch.testing.assert_close(call.last_noise_uncond, call.rows_before[-n:] + oracle.row_change(call))
        moved += int(oracle.row_change(call).abs().max() > 1e-3)
    assert moved > 0
