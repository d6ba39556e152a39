"""The concept steering with a real (tiny, random-weight) open_clip judge and a real conv decoder."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser.concepts.decoding import MemoryOptions, decode_for_judge, decoder_blocks
from lib_safe_denoiser.concepts.parsing import ConceptError
from lib_safe_denoiser.concepts.steering import ConceptSteering
from lib_safe_denoiser.generation.cfg_rows import correction_delta

CONCEPTS = ("nudity", "violence", "blood")


def make(judge, decode, **settings) -> ConceptSteering:
    """A steering judging the whole test batch at once (the default, one sample at a time, is
    exercised where chunking matters)."""
    return ConceptSteering(judge, CONCEPTS, decode, **{"chunk_size": 8, **settings})


def max_similarity(judge, decoder, x0: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return judge.similarities(decoder(x0), CONCEPTS).max(dim=1).values


def eta_between(sims: torch.Tensor) -> float:
    """A threshold with half the samples above it (midway between two neighbouring values)."""
    ordered = sims.sort().values
    mid = len(ordered) // 2
    return float(ordered[mid - 1] + ordered[mid]) / 2


def test_the_gradient_reaches_x0(judge, decoder, latents):
    leaf = latents.clone().requires_grad_(True)
    steering = make(judge, decoder, eta=-1.0)
    log_p = steering.log_p(judge.similarities(decode_for_judge(decoder, leaf, MemoryOptions()), CONCEPTS))
    (grad,) = torch.autograd.grad(log_p.sum(), leaf)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 0).all()  # every sample's latents get a gradient


def test_the_trigger_mask_selects_exactly_the_samples_above_eta(judge, decoder, latents):
    sims = max_similarity(judge, decoder, latents)
    eta = eta_between(sims)
    steering = make(judge, decoder, eta=eta, chunk_size=4)
    out = steering.steer(latents)
    expected = sims > eta
    assert 0 < int(expected.sum()) < len(sims)
    (step,) = steering.steps
    assert step.triggered == tuple(bool(v) for v in expected)
    assert torch.allclose(torch.tensor(step.max_similarity), sims, atol=1e-5)
    moved = (out != latents).flatten(1).any(dim=1)
    assert moved.tolist() == expected.tolist()
    assert torch.equal(out[~expected], latents[~expected])  # untriggered: bit for bit


def test_untriggered_samples_are_the_very_values_given(judge, decoder, latents):
    x0 = latents.to(torch.float64)  # a dtype the steering computes in float32: untouched rows must not round
    sims = max_similarity(judge, decoder, latents)
    steering = ConceptSteering(judge, CONCEPTS, lambda z: decoder(z.float()), eta=eta_between(sims))
    out = steering.steer(x0)
    quiet = ~torch.tensor(steering.steps[0].triggered)
    assert out.dtype == x0.dtype
    assert torch.equal(out[quiet], x0[quiet])
    assert not torch.equal(out[~quiet], x0[~quiet])


def test_no_trigger_returns_the_input_itself(judge, decoder, latents):
    steering = make(judge, decoder, eta=0.99)
    assert steering.steer(latents) is latents
    assert steering.summary().triggered_per_step == (0,)


def test_one_step_lowers_the_triggered_samples_similarity(judge, decoder, latents):
    before = max_similarity(judge, decoder, latents)
    eta = eta_between(before)
    probe = make(judge, decoder, eta=eta, gamma=1.0)
    delta = probe.steer(latents) - latents
    fired = torch.tensor(probe.steps[0].triggered)
    # a step of 1% of the latents' norm: small enough for the first-order decrease to show
    gamma = 0.01 * float(latents[fired].norm() / delta[fired].norm())
    steering = make(judge, decoder, eta=eta, gamma=gamma)
    after = max_similarity(judge, decoder, steering.steer(latents))
    assert (after[fired] < before[fired]).all()
    assert torch.equal(after[~fired], before[~fired])


def test_the_window_is_in_sigma_and_outside_it_nothing_runs(judge, decoder, latents):
    calls = []

    def counting(z):
        calls.append(z.shape[0])
        return decoder(z)

    steering = make(judge, counting, eta=-1.0, sigma_min=1.0, sigma_max=5.0)
    assert steering.steer(latents, sigma=0.5) is latents
    assert steering.steer(latents, sigma=torch.tensor([7.0] * 6)) is latents
    assert calls == [] and steering.steps == []
    out = steering.steer(latents, sigma=2.0)
    assert sum(calls) == 6 and steering.steps[0].sigma == 2.0
    assert not torch.equal(out, latents)


def test_per_sample_sigmas_judge_only_the_rows_in_the_window(judge, decoder, latents):
    steering = make(judge, decoder, eta=-1.0, sigma_min=1.0, sigma_max=5.0)
    sigma = torch.tensor([2.0, 9.0, 2.0, 9.0, 2.0, 9.0])
    out = steering.steer(latents, sigma=sigma)
    outside = sigma > 5
    assert torch.equal(out[outside], latents[outside])
    assert not torch.equal(out[~outside], latents[~outside])
    assert len(steering.steps[0].triggered) == 3


def test_correct_plugs_into_the_cfg_rows_protocol(judge, decoder, latents):
    """``correction_delta`` (what the glue uses for the bank correction) takes the steering's ``correct``."""
    x_t = latents + torch.randn_like(latents)
    sigma = torch.full((6,), 3.0, dtype=torch.float64)
    quiet = make(judge, decoder, eta=0.99)
    assert correction_delta(latents, x_t, sigma, quiet.correct) is None
    loud = make(judge, decoder, eta=-1.0)
    delta = correction_delta(latents, x_t, sigma, loud.correct)
    assert delta is not None and (delta.flatten(1).norm(dim=1) > 0).all()


@pytest.mark.parametrize("memory, blocks", [
    (MemoryOptions(checkpoint=True), False),
    (MemoryOptions(checkpoint=True), True),
    (MemoryOptions(tile_size=16), False),
])
def test_exact_memory_options_give_the_same_correction(judge, decoder, latents, memory, blocks):
    """Checkpointing recomputes the same graph; a tile as large as the latents is the whole decode."""
    plain = make(judge, decoder, eta=-1.0)
    saving = make(judge, decoder, eta=-1.0, memory=memory,
                             blocks=decoder_blocks(decoder) if blocks else ())
    assert torch.allclose(saving.steer(latents), plain.steer(latents), atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(decoder.net[1])  # the per-block patch is undone


def test_tiled_decode_matches_a_whole_decode_for_a_local_decoder(latents):
    """With a decoder whose output pixels depend on their own latent pixel only, tiles blend exactly."""
    torch.manual_seed(3)
    local = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 1), torch.nn.Upsample(scale_factor=8, mode="nearest"))
    z = torch.randn(2, 4, 40, 36, requires_grad=True)
    whole = local(z)
    tiled = decode_for_judge(local, z, MemoryOptions(tile_size=16, tile_overlap=5))
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-6)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), z)
    (g_tiled,) = torch.autograd.grad(tiled.square().sum(), z)
    assert torch.allclose(g_tiled, g_whole, rtol=1e-4, atol=1e-4)


def test_lower_resolution_decode_halves_the_image_and_still_steers(judge, decoder, latents):
    seen = []

    def recording(z):
        seen.append(tuple(z.shape[-2:]))
        return decoder(z)

    steering = make(judge, recording, eta=-1.0, memory=MemoryOptions(decode_scale=0.5))
    out = steering.steer(latents)
    assert set(seen) == {(4, 4)}
    assert (out - latents).flatten(1).norm(dim=1).gt(0).all()


def test_summary_for_infotext(judge, decoder, latents):
    sims = max_similarity(judge, decoder, latents)
    steering = make(judge, decoder, eta=eta_between(sims), sigma_min=1.0)
    steering.steer(latents, sigma=3.0)
    steering.steer(latents, sigma=0.5)  # outside the window: not judged, not counted
    summary = steering.summary()
    assert summary.triggered_per_step == (3,)
    assert summary.max_similarity == pytest.approx(float(sims.max()), abs=1e-5)
    steering.reset()
    assert math.isnan(steering.summary().max_similarity)


def test_top_k_none_sums_every_concept_and_negative_similarities_do_not_poison(judge, decoder, latents):
    steering = make(judge, decoder, eta=-1.0, top_k=None)
    sims = torch.tensor([[0.3, -0.2, 0.1]])
    assert float(steering.log_p(sims)) == pytest.approx(math.log(0.3) + math.log(1e-4) + math.log(0.1), rel=1e-5)
    assert torch.isfinite(steering.steer(latents)).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"eta": 1.5}, "eta must lie"),
    ({"gamma": -1.0}, "gamma must be"),
    ({"sigma_min": 3.0, "sigma_max": 1.0}, "sigma window"),
    ({"top_k": 0}, "top_k"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"concepts": " , "}, "no concepts"),
])
def test_bad_settings_are_refused_by_name(judge, decoder, kwargs, message):
    fields = {"concepts": CONCEPTS, **kwargs}
    with pytest.raises(ConceptError, match=message):
        ConceptSteering(judge, decode=decoder, **fields)


@pytest.mark.parametrize("kwargs, message", [
    ({"decode_scale": 0.0}, "decode_scale"),
    ({"decode_scale": 1.5}, "decode_scale"),
    ({"tile_size": 8}, "tile_size must be 0"),
    ({"tile_size": 16, "tile_overlap": 16}, "tile_overlap"),
])
def test_bad_memory_options_are_refused(kwargs, message):
    with pytest.raises(ConceptError, match=message):
        MemoryOptions(**kwargs)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_it_steers_inside_the_webui_s_no_grad_sampling(judge, decoder, latents, context):
    """The WebUI samples under ``torch.no_grad``; the steering turns gradients on for itself."""
    with context():
        x0 = latents.clone()
        out = make(judge, decoder, eta=-1.0).steer(x0)
    assert not out.requires_grad
    assert (out - latents).flatten(1).norm(dim=1).gt(0).all()
