"""A generation through the glue, hook by hook as the WebUI runs it, on the stand-in modules."""

from __future__ import annotations

import pytest
import torch
from modules import shared

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_BANK, KEY_ERROR, KEY_HASH, KEY_MODE
from tests.glue import harness, oracle
from tests.glue.conftest import last_job, our_callbacks
from tests.glue.test_samplers import EITHER_AND_SAFE, assert_each_image_moved_the_right_way, constant, odds

HIRES_HW = (12, 12)
HIRES_CALLS = harness._img2img_steps(harness.IMG2IMG_STRENGTH, 10) + 1
"""Euler calls of the hires pass: 10 steps at denoising strength 0.5 start at step 4 of 10."""


@pytest.mark.parametrize("sampler", harness.SAMPLERS)
def test_disabled_job_is_bit_identical_to_no_extension(script, glue, sampler):
    plain = harness.run_job(None, [], sampler=sampler)
    disabled = harness.run_job(script, [False, "unsafe"], sampler=sampler)
    assert torch.equal(plain.samples, disabled.samples)
    assert all(torch.equal(a, b) for a, b in zip(plain.previews, disabled.previews, strict=True))
    assert disabled.p.extra_generation_params == {} and our_callbacks(glue) == []


def test_infotext_records_the_bank_and_what_the_correction_did(script, glue):
    res = harness.run_job(script, odds(), prompts=EITHER_AND_SAFE)
    info = res.p.extra_generation_params
    assert info[KEY_BANK] == "unsafe" and info[KEY_MODE] == "odds"
    assert info[KEY_HASH] == glue.STORE.get("unsafe").short_hash
    trace = last_job(glue).trace
    assert info[KEY_ACTED] == f"{sum(1 for s in trace.steps if s.acted)}/10"
    assert 0 < sum(1 for s in trace.steps if s.acted) < 10, "odds: it acts near the bank only"
    assert our_callbacks(glue) == [], "callbacks must not outlive the job"


def test_inpainting_steers_the_repainted_area_and_keeps_the_rest(script, glue):
    """Each call is the correction of the WebUI's prediction for the whole latent, which the WebUI
    then blends with the original: the correction reaches the sampler only through the repainted
    half, and the kept half of what the sampler returns is bit for bit that of a job without it."""
    init = harness.picture_latent(shared.sd_model, harness.SAFE[0], (8, 8)).expand(2, -1, -1, -1).clone()
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1  # keep the left half of the original
    plain = harness.run_job(None, [], mask=mask, init_latent=init)
    probe = harness.Probe()
    script.is_img2img = True  # the img2img tab's own Script instance, as the WebUI's runner sets it
    res = harness.run_job(script, constant(), mask=mask, init_latent=init, probe=probe)
    assert KEY_ERROR not in res.p.extra_generation_params and len(res.images) == 2
    safe = oracle.job_denoiser(glue, is_img2img=True)
    assert oracle.assert_every_call_corrected(probe.calls, safe, scale=res.p.cfg_scale) == 10
    assert torch.equal(res.sampled[..., :4], plain.sampled[..., :4])
    assert torch.equal(res.samples[..., :4], init[..., :4])
    assert (res.samples[..., 4:] - plain.samples[..., 4:]).abs().amax(dim=(1, 2, 3)).min() > 0.01, "each repainted"


def test_hires_pass_is_steered_at_its_own_size_unless_disabled(script, glue, monkeypatch):
    calls = shared.sd_model.first_stage_model
    probe = harness.Probe()
    res = harness.run_job(script, constant(), hires_hw=HIRES_HW, probe=probe)
    assert res.samples.shape[-2:] == HIRES_HW and len(res.images) == 2
    assert glue.STORE.has_latents("unsafe", glue.vae_id(shared.sd_model), HIRES_HW)
    assert res.p.extra_generation_params[KEY_ACTED] == f"{10 + HIRES_CALLS}/{10 + HIRES_CALLS}"
    first, hires = probe.calls[:10], probe.calls[10:]
    assert len(hires) == HIRES_CALLS
    assert oracle.assert_every_call_corrected(first, oracle.job_denoiser(glue)) == 10
    assert oracle.assert_every_call_corrected(hires, oracle.job_denoiser(glue, hw=HIRES_HW)) == HIRES_CALLS

    encoded = calls.calls
    again = harness.run_job(script, constant(), hires_hw=HIRES_HW)
    assert calls.calls == encoded, "a second generation encodes nothing"
    assert torch.equal(again.samples, res.samples)

    monkeypatch.setitem(shared.opts.data, glue.OPT_STEER_HIRES, False)
    probe = harness.Probe()
    off = harness.run_job(script, constant(), hires_hw=HIRES_HW, probe=probe)
    assert off.p.extra_generation_params[KEY_ACTED] == "10/10"
    assert KEY_ERROR not in off.p.extra_generation_params and len(off.images) == 2
    for call in probe.calls[10:]:  # the hires pass is left alone: its rows and its combination
        n = len(call.conds_list)
        assert torch.equal(call.rows, call.rows_before)
        own = call.denoiser.combine_denoised(call.rows, call.conds_list, call.rows[-n:], 1.0)
        assert torch.equal(call.denoised, own)


def test_xyz_override_beats_the_ui(script, glue):
    res = harness.run_job(script, odds(), xyz={"strength": 0.0})
    plain = harness.run_job(None, [])
    assert torch.equal(res.samples, plain.samples)
    assert res.p.extra_generation_params["Safe denoiser strength"] == "0"


@pytest.mark.parametrize("args, message", [
    ([True, "no-such-bank"], "no-such-bank"),
    ([{"enabled": True, "bank": "unsafe", "strenght": 2}], "strenght"),
    ([True, "../x"], "bank"),
])
def test_bad_arguments_fail_closed(script, glue, args, message):
    res = harness.run_job(script, args)
    assert res.images == [], "a job that asked for steering never returns unsteered images"
    assert message in res.p.extra_generation_params[KEY_ERROR]
    assert any("withheld" in c for c in res.p.comments)
    assert our_callbacks(glue) == []
    assert len(harness.run_job(script, [False]).images) == 2, "the next job runs normally"


def test_bank_from_another_model_family_fails_closed(script, glue, monkeypatch):
    monkeypatch.setattr(harness, "CHANNELS", 16)  # the model samples 16-channel latents
    res = harness.run_job(script, odds())
    assert res.images == [] and "another model family" in res.p.extra_generation_params[KEY_ERROR]


def test_failure_inside_a_callback_interrupts_and_withholds(script, glue, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    from lib_safe_denoiser.generation import steering

    monkeypatch.setattr(steering.Steering, "steer_outputs_", broken)
    res = harness.run_job(script, odds())
    assert res.images == [] and "boom" in res.p.extra_generation_params[KEY_ERROR]
    assert shared.state.interrupted and our_callbacks(glue) == []


def test_sdxl_conditioning_and_cache_key(script, glue, monkeypatch):
    """SDXL passes dict conditioning through the CFG denoiser; its latents are cached apart."""
    plain = harness.run_job(None, [], prompts=EITHER_AND_SAFE)
    shared.sd_model = harness.TinyModel(is_sd1=False, is_sdxl=True)
    monkeypatch.setattr(harness, "SDXL_CONDS", True)
    assert glue.vae_id(shared.sd_model).startswith("sdxl-")
    probe = harness.Probe()
    steered = harness.run_job(script, odds(), prompts=EITHER_AND_SAFE, probe=probe)
    assert KEY_ERROR not in steered.p.extra_generation_params and len(steered.images) == 2
    assert_each_image_moved_the_right_way(glue, plain.samples, steered.samples)
    oracle.assert_every_call_corrected(probe.calls, oracle.job_denoiser(glue))
    assert glue.STORE.has_latents("unsafe", glue.vae_id(shared.sd_model), (8, 8))


def test_fork_without_cfg_denoised_is_steered_after_cfg(script, glue, monkeypatch):
    """Forks that never fire on_cfg_denoised (Forge) still get the final image steered, once."""
    from modules import sd_samplers_cfg_denoiser

    both = harness.run_job(script, odds(), prompts=EITHER_AND_SAFE)
    monkeypatch.setattr(sd_samplers_cfg_denoiser, "cfg_denoised_callback", lambda params: None)
    fallback = harness.run_job(script, odds(), prompts=EITHER_AND_SAFE)
    assert KEY_ERROR not in fallback.p.extra_generation_params
    torch.testing.assert_close(fallback.samples, both.samples, rtol=1e-5, atol=1e-5)
    assert fallback.p.extra_generation_params[KEY_ACTED] == both.p.extra_generation_params[KEY_ACTED]
