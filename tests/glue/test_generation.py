"""A generation through the glue, hook by hook as the WebUI runs it, on the stand-in modules."""

from __future__ import annotations

import pytest
import torch
from modules import errors, shared

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_BANK, KEY_ERROR, KEY_HASH, KEY_MODE
from tests.glue import harness
from tests.glue.conftest import our_callbacks


def odds(**extra):
    return [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "odds", "strength": 1.0,
             "reference_bank": "reference", "window_start": 0.0, "window_end": 1.0, **extra}]


def bank_distance(glue, samples: torch.Tensor) -> torch.Tensor:
    """Per sample, the distance to the nearest latent of the unsafe bank."""
    bank = glue.STORE.latents("unsafe", encoder=glue.encoder_for(shared.sd_model),
                              vae_id=glue.vae_id(shared.sd_model), latent_hw=tuple(samples.shape[-2:]))
    return torch.cdist(samples.flatten(1), bank.flatten(1)).min(dim=1).values


def test_disabled_job_is_bit_identical_to_no_extension(script, glue):
    plain = harness.run_job(None, [])
    disabled = harness.run_job(script, [False, "unsafe"])
    assert torch.equal(plain.samples, disabled.samples)
    assert all(torch.equal(a, b) for a, b in zip(plain.previews, disabled.previews, strict=True))
    assert disabled.p.extra_generation_params == {} and our_callbacks(glue) == []


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_enabled_steers_away_from_the_bank(script, glue, sampler):
    plain = harness.run_job(None, [], sampler=sampler)
    steered = harness.run_job(script, odds(), sampler=sampler)
    before, after = bank_distance(glue, plain.samples), bank_distance(glue, steered.samples)
    assert after[0] > before[0] + 0.5, (before, after)  # image 0 asked for the bank's picture
    assert torch.isfinite(steered.samples).all()
    info = steered.p.extra_generation_params
    assert info[KEY_BANK] == "unsafe" and info[KEY_MODE] == "odds" and len(info[KEY_HASH]) == 10
    acted, total = map(int, info[KEY_ACTED].split("/"))
    assert 0 < acted <= total == 10
    assert our_callbacks(glue) == [], "callbacks must not outlive the job"


def test_preview_and_interrupted_result_carry_the_correction(script, glue):
    """The live preview and an interrupted result come from the cond rows, before on_cfg_after_cfg."""
    plain = harness.run_job(None, [], interrupt_at=3, prompts=[[(1, 1.0)]])
    steered = harness.run_job(script, odds(), interrupt_at=3, prompts=[[(1, 1.0)]])
    assert len(steered.previews) == 3 and len(steered.images) == 1
    # step 0 sees the same noise in both runs: the preview moved by exactly the engine's correction
    job = glue.LAST_JOBS[(None, False)]
    safe = glue.FACTORY.build(job, alphas_cumprod=shared.sd_model.alphas_cumprod,
                              encoder=glue.encoder_for(shared.sd_model), vae_id=glue.vae_id(shared.sd_model),
                              latent_shape=(4, 8, 8))
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * harness.SIGMA_MAX
    expected = safe.correct(x_t, harness.SIGMA_MAX, plain.previews[0])
    assert job.trace.steps[0].acted == 1
    assert not torch.equal(plain.previews[0], steered.previews[0])
    torch.testing.assert_close(steered.previews[0], expected, rtol=1e-5, atol=1e-5)
    # an interrupt returns the sampler's last latent: the steered cond-row prediction
    assert torch.equal(steered.samples, steered.previews[-1])
    assert bank_distance(glue, steered.samples)[0] > bank_distance(glue, plain.samples)[0]


def test_cfg_and_prompts_batch_of_two(script, glue):
    prompts = [[(1, 0.7), (2, 0.5)], [(2, 1.0)]]
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=7.0)
    res = harness.run_job(script, odds(), prompts=prompts, p=p)
    assert len(res.images) == 2 and torch.isfinite(res.samples).all()
    assert KEY_ERROR not in res.p.extra_generation_params


def test_inpainting_keeps_the_masked_area(script, glue):
    init = harness.picture_latent(shared.sd_model, 2, (8, 8)).expand(2, -1, -1, -1).clone()
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1  # keep the left half of the original
    res = harness.run_job(script, odds(), mask=mask, init_latent=init)
    plain = harness.run_job(None, [], mask=mask, init_latent=init)
    assert not torch.equal(res.samples[:, :, :, 4:], plain.samples[:, :, :, 4:])
    assert res.previews and KEY_ERROR not in res.p.extra_generation_params


def test_hires_pass_is_steered_at_its_own_size_unless_disabled(script, glue):
    calls = shared.sd_model.first_stage_model
    res = harness.run_job(script, odds(), hires_hw=(12, 12))
    assert res.samples.shape[-2:] == (12, 12)
    assert glue.STORE.has_latents("unsafe", glue.vae_id(shared.sd_model), (12, 12))
    acted, total = map(int, res.p.extra_generation_params[KEY_ACTED].split("/"))
    assert total == 20  # both passes
    encoded = calls.calls
    again = harness.run_job(script, odds(), hires_hw=(12, 12))
    assert calls.calls == encoded, "a second generation encodes nothing"
    assert torch.equal(again.samples, res.samples)

    shared.opts.data[glue.OPT_STEER_HIRES] = False
    try:
        off = harness.run_job(script, odds(), hires_hw=(12, 12))
    finally:
        shared.opts.data[glue.OPT_STEER_HIRES] = True
    assert off.p.extra_generation_params[KEY_ACTED].endswith("/10")


def test_skipped_uncond_steps_use_the_scale_the_webui_used(script, glue):
    shared.opts.data["skip_early_cond"] = 0.3
    try:
        p = harness.Processing(sd_model=shared.sd_model, cfg_scale=5.0)
        res = harness.run_job(script, odds(), p=p)
    finally:
        shared.opts.data["skip_early_cond"] = 0.0
    assert torch.isfinite(res.samples).all() and len(res.images) == 2


def test_xyz_override_beats_the_ui(script, glue):
    res = harness.run_job(script, odds(), xyz={"strength": 0.0})
    plain = harness.run_job(None, [])
    assert torch.equal(res.samples, plain.samples)
    assert res.p.extra_generation_params["Safe denoiser strength"] == "0"


def test_paper_mode_default_preset_runs(script, glue):
    res = harness.run_job(script, [True, "unsafe"])
    info = res.p.extra_generation_params
    assert info[KEY_MODE] == "paper" and info["Safe denoiser preset"] == "nudity (SD 1.x)"
    assert len(res.images) == 2 and KEY_ERROR not in info


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


def test_unsupported_model_is_refused_clearly(script, glue):
    shared.sd_model = harness.TinyModel(is_sd3=True)
    res = harness.run_job(script, odds())
    assert res.images == [] and "SD3" in res.p.extra_generation_params[KEY_ERROR]


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


def test_callbacks_left_by_a_crashed_job_are_removed_and_inert(script, glue):
    p = harness.Processing(sd_model=shared.sd_model)
    script.process(p, *odds())  # the job dies here: no sampling, no postprocess
    assert len(our_callbacks(glue)) == 3
    plain = harness.run_job(None, [])  # a job without our script hooks: the stale callbacks stay inert
    errors.reported.clear()
    again = harness.run_job(None, [])
    assert torch.equal(plain.samples, again.samples) and not errors.reported
    harness.run_job(script, [False])  # any job with the extension loaded cleans up first
    assert our_callbacks(glue) == []


def test_unload_removes_callbacks(script, glue):
    from modules import script_callbacks

    script.process(harness.Processing(sd_model=shared.sd_model), *odds())
    script_callbacks.script_unloaded_callback()
    assert our_callbacks(glue) == []


def test_sdxl_conditioning_and_cache_key(script, glue, monkeypatch):
    """SDXL passes dict conditioning through the CFG denoiser; its latents are cached apart."""
    plain = harness.run_job(None, [], prompts=[[(1, 1.0)], [(2, 0.6), (1, 0.4)]])
    shared.sd_model = harness.TinyModel(is_sd1=False, is_sdxl=True)
    monkeypatch.setattr(harness, "SDXL_CONDS", True)
    assert glue.vae_id(shared.sd_model).startswith("sdxl-")
    steered = harness.run_job(script, odds(), prompts=[[(1, 1.0)], [(2, 0.6), (1, 0.4)]])
    assert KEY_ERROR not in steered.p.extra_generation_params and len(steered.images) == 2
    assert bank_distance(glue, steered.samples)[0] > bank_distance(glue, plain.samples)[0] + 0.5
    assert glue.STORE.has_latents("unsafe", glue.vae_id(shared.sd_model), (8, 8))


def test_fork_without_cfg_denoised_is_steered_after_cfg(script, glue, monkeypatch):
    """Forks that never fire on_cfg_denoised (Forge) still get the final image steered, once."""
    from modules import sd_samplers_cfg_denoiser

    both = harness.run_job(script, odds())
    monkeypatch.setattr(sd_samplers_cfg_denoiser, "cfg_denoised_callback", lambda params: None)
    fallback = harness.run_job(script, odds())
    assert KEY_ERROR not in fallback.p.extra_generation_params
    torch.testing.assert_close(fallback.samples, both.samples, rtol=1e-5, atol=1e-5)
    assert fallback.p.extra_generation_params[KEY_ACTED] == both.p.extra_generation_params[KEY_ACTED]
