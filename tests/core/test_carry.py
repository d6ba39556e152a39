"""The paper mode's carry: the prediction change that moves a sampler's next state as the official loop's
state replacement does, and the next-noise-level estimate it needs."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser.core.carry import CARRY_KINDS, SIGMA_FLOOR, Carry, ancestral_down, unipc_coefficients


@pytest.mark.parametrize("sigma, nxt, eta, down", [
    (2.0, 1.0, 0.0, 1.0),  # deterministic: all the way
    (2.0, 0.0, 1.0, 0.0),  # the last step
    (2.0, 1.0, 1.0, 0.5),  # up = sqrt(1 * (4 - 1) / 4), down = sqrt(1 - 3/4)
    (2.0, 1.0, 0.5, math.sqrt(1 - 0.75 / 4)),
    (2.0, 1.0, 10.0, 0.0),  # up is capped at sigma_next
])
def test_ancestral_down_is_k_diffusions(sigma, nxt, eta, down):
    assert ancestral_down(sigma, nxt, eta) == pytest.approx(down, abs=1e-12)


def test_the_first_step_estimates_a_log_uniform_descent_then_the_last_ratio_is_kept():
    carry = Carry("step")
    assert carry.factor(10.0, 11) == pytest.approx(10.0 / (10.0 - 10.0 * (SIGMA_FLOOR / 10.0) ** 0.1))
    assert carry.factor(8.0, 10) == pytest.approx(8.0 / (8.0 - 6.4))  # next = 8 * (8 / 10)
    assert carry.factor(4.0, 9) == pytest.approx(4.0 / (4.0 - 2.0))
    assert carry.factor(6.0, 1) == 1.0, "a higher noise level starts over, and one step left has no next"
    assert carry.factor(3.0, 5) == pytest.approx(3.0 / (3.0 - 1.5))


def test_at_the_floor_or_the_last_step_nothing_is_scaled():
    assert Carry("step").factor(SIGMA_FLOOR, 10) == 1.0
    assert Carry("step").factor(SIGMA_FLOOR * 1.01, 10) > 1.0
    assert Carry("step").factor(5.0, 2) == pytest.approx(5.0 / (5.0 - SIGMA_FLOOR))


def test_ancestral_samplers_scale_by_their_deterministic_descent():
    carry = Carry("step", eta=1.0)
    carry.factor(10.0, 11)
    assert carry.factor(8.0, 10) == pytest.approx(8.0 / (8.0 - ancestral_down(8.0, 6.4, 1.0)))


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, d, c = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    return 4.0 * x, d, d + 0.1 * c


def test_the_first_call_carries_the_correction_and_the_renoising_on_acted_rows():
    x, d, corrected = inputs()
    acted = torch.tensor([True, False, True])
    carry = Carry("step", generator=torch.Generator().manual_seed(5))
    out = carry.first(x, 4.0, d, corrected, acted, steps_left=20)
    factor = 4.0 / (4.0 - 4.0 * (SIGMA_FLOOR / 4.0) ** (1 / 19))
    noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = d + factor * (corrected - d + acted[:, None] * (4.0 * noise - (x - d)))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], d[1] + factor * (corrected[1] - d[1]))


def test_an_uncorrected_prediction_is_returned_as_is_and_still_advances_the_schedule():
    x, d, _ = inputs(1)
    carry = Carry("heun")
    assert carry.first(x, 10.0, d, d, torch.ones(3, dtype=torch.bool), steps_left=11) is d
    assert carry.second(d) is d, "nothing pending"
    assert carry.factor(8.0, 10) == pytest.approx(5.0)


def test_heuns_second_call_completes_the_first_calls_carry_once():
    x, d, corrected = inputs(2)
    acted = torch.ones(3, dtype=torch.bool)
    carry = Carry("heun", generator=torch.Generator().manual_seed(3))
    carry.factor(10.0, 11)
    first = carry.first(x, 8.0, d, corrected, acted, steps_left=10)
    change = (first - d) / 5.0
    d2 = d + 1.0
    torch.testing.assert_close(carry.second(d2), d2 + 4.0 * change)
    assert carry.second(d2) is d2


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp_sdes_first_call_carries_to_its_midpoint_and_the_second_completes_the_step(eta):
    x, d, corrected = inputs(4)
    acted = torch.ones(3, dtype=torch.bool)
    carry = Carry("midpoint", eta=eta, generator=torch.Generator().manual_seed(3))
    carry.factor(10.0, 11)
    first = carry.first(x, 8.0, d, corrected, acted, steps_left=10)
    mid = 8.0 / (8.0 - ancestral_down(8.0, math.sqrt(8.0 * 6.4), eta))
    full = 8.0 / (8.0 - ancestral_down(8.0, 6.4, eta))
    noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    change = corrected - d + 8.0 * noise - (x - d)
    torch.testing.assert_close(first, d + mid * change)
    torch.testing.assert_close(carry.second(d), d + (full - 1.0) * change)


def test_a_midpoint_carry_without_a_next_noise_level_scales_nothing():
    x, d, corrected = inputs(5)
    carry = Carry("midpoint", generator=torch.Generator().manual_seed(3))
    out = carry.first(x, 8.0, d, corrected, torch.zeros(3, dtype=torch.bool), steps_left=1)
    torch.testing.assert_close(out, corrected)
    assert torch.equal(carry.second(d), d)


def test_single_call_samplers_have_nothing_pending():
    x, d, corrected = inputs(3)
    carry = Carry("step")
    carry.first(x, 8.0, d, corrected, torch.ones(3, dtype=torch.bool), steps_left=10)
    assert carry.second(d) is d


@pytest.mark.parametrize("kind, eta, unipc, message", [
    ("dpmpp_2m", 0.0, (3, "bh1", True), "kind must be one of"),
    ("step", -0.5, (3, "bh1", True), "eta must be >= 0"),
    ("step", math.nan, (3, "bh1", True), "eta must be >= 0"),
    ("unipc", 0.0, (3, "vary_coeff", True), "UniPC needs an order >= 1 and the variant bh1 or bh2"),
    ("unipc", 0.0, (0, "bh1", True), "UniPC needs an order >= 1"),
])
def test_bad_arguments_are_named(kind, eta, unipc, message):
    with pytest.raises(ValueError, match=message):
        Carry(kind, eta, unipc=unipc)
    assert CARRY_KINDS == ("step", "heun", "midpoint", "multistep", "plms", "unipc")


def test_the_config_takes_carry_as_a_boolean():
    from lib_safe_denoiser import SafeDenoiserConfig

    assert SafeDenoiserConfig().carry is True and SafeDenoiserConfig(carry=False).carry is False
    with pytest.raises(ValueError, match="carry must be True or False, got 1"):
        SafeDenoiserConfig(carry=1)


def displacement(x, sigma, d, corrected, gen):
    return corrected - d + sigma * torch.randn(3, 5, generator=gen, dtype=torch.float64) - (x - d)


def test_dpmpp_2m_makes_up_for_what_the_last_change_left_in_its_extrapolation():
    x, d, corrected = inputs(6)
    acted = torch.ones(3, dtype=torch.bool)
    carry = Carry("multistep", generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    out1 = carry.first(x, 10.0, d, corrected, acted, steps_left=11)
    r1 = (SIGMA_FLOOR / 10.0) ** 0.1
    delta1 = displacement(x, 10.0, d, corrected, gen)
    torch.testing.assert_close(out1, d + delta1 / (1 - r1), msg="its first step is first order: q = 0")
    out2 = carry.first(x, 8.0, d, corrected, acted, steps_left=10)
    delta2 = displacement(x, 8.0, d, corrected, gen)
    excess1 = delta1 / (1 - r1) - delta1
    change2 = excess1 / 3 + (1 + 0.8 / (0.2 * 1.5)) * delta2
    torch.testing.assert_close(out2, d + change2)
    out3 = carry.first(x, 6.4, d, d, acted, steps_left=9)
    torch.testing.assert_close(out3, d + (change2 - delta2) / 3, msg="after the window: the tail")
    assert Carry("multistep").first(x, 6.4, d, d, acted, steps_left=9) is d


def test_plms_cancels_its_earlier_eps_changes_in_the_extrapolation():
    x, d, corrected = inputs(7)
    acted = torch.ones(3, dtype=torch.bool)
    carry = Carry("plms", generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    out1 = carry.first(x, 10.0, d, corrected, acted, steps_left=11)
    g1 = 10.0 / (10.0 - 10.0 * (SIGMA_FLOOR / 10.0) ** 0.1)
    delta1 = displacement(x, 10.0, d, corrected, gen)
    torch.testing.assert_close(out1, d + g1 * delta1)
    torch.testing.assert_close(carry.second(d), d + (g1 - 1) * delta1)
    e1 = -g1 * delta1 / 10.0
    out2 = carry.first(x, 8.0, d, corrected, acted, steps_left=10)
    delta2 = displacement(x, 8.0, d, corrected, gen)
    e2 = (delta2 / (6.4 - 8.0) + e1 / 2) / 1.5
    torch.testing.assert_close(out2, d - 8.0 * e2)
    out3 = carry.first(x, 6.4, d, d, acted, steps_left=9)
    e3 = (16 / 12 * e2 - 5 / 12 * e1) / (23 / 12)
    torch.testing.assert_close(out3, d - 6.4 * e3)
    out4 = carry.first(x, 5.12, d, d, acted, steps_left=8)
    e4 = (59 / 24 * e3 - 37 / 24 * e2 + 9 / 24 * e1) / (55 / 24)
    torch.testing.assert_close(out4, d - 5.12 * e4)
    out5 = carry.first(x, 4.096, d, d, acted, steps_left=7)
    e5 = (59 / 24 * e4 - 37 / 24 * e3 + 9 / 24 * e2) / (55 / 24)
    torch.testing.assert_close(out5, d - 4.096 * e5, msg="the oldest change leaves the extrapolation")
    assert Carry("plms").first(x, 8.0, d, d, acted, steps_left=9) is d
    fresh = Carry("plms")
    fresh.first(x, 10.0, d, d, acted, steps_left=11)
    assert fresh.first(x, 8.0, d, d, acted, steps_left=10) is d, "nothing to cancel"


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("corrector", [True, False])
def test_unipc_coefficients_are_the_webui_step_as_a_linear_map(variant, order, corrector):
    """The WebUI's UniPC step, transcribed in benchmarks/official_reference.py, is a*x + sum w M + k m_t."""
    from benchmarks.official_reference import _unipc_update

    gen = torch.Generator().manual_seed(order)
    x, m_t = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    models = [torch.randn(4, 6, generator=gen) for _ in range(order)]
    sigmas = [14.0, 9.5, 6.1, 4.2][-order - 1:]  # the kept predictions' levels, then the step's
    lambdas = [-math.log(s) for s in sigmas[:-1]]
    state, _ = _unipc_update(lambda _x, _s: m_t, x, models, lambdas, sigmas[-1], order, corrector, variant)
    a, w, k = unipc_coefficients(lambdas, -math.log(sigmas[-1]), order, variant, corrector)
    linear = a * x + k * m_t + sum(weight * m for weight, m in zip(w, reversed(models), strict=True))
    torch.testing.assert_close(linear, state, rtol=1e-5, atol=1e-5)
    assert (k != 0) == corrector
