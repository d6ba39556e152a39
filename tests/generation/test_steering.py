"""One pass's steering: the three CFG callbacks' hand-overs, each step corrected exactly once."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.generation.steering import Steering
from lib_safe_denoiser.generation.trace import GenerationTrace

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
CONDS = [[(0, 1.0)], [(1, 1.0)]]
"""Two images, one prompt each: rows 0, 1 cond, rows 2, 3 uncond."""
REQUIRE = r"^the model outputs arrived without their inputs \(on_cfg_denoiser did not run\)$"


def make(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(5, 2, 3, 3, generator=gen)
    safe = SafeDenoiser(bank, None, SafeDenoiserConfig(mode="constant", strength=0.5))
    x = torch.randn(2, 2, 3, 3, generator=gen)
    x_in = torch.cat([x, x])
    rows = torch.randn(4, 2, 3, 3, generator=gen)
    return Steering(safe, GenerationTrace()), safe, x_in, rows


def test_outputs_are_corrected_in_place_and_the_step_is_not_corrected_twice():
    steering, safe, x_in, rows = make()
    sigma = torch.tensor([2.0, 3.0, 2.0, 3.0])
    steering.capture(x_in, sigma)
    assert steering.sigma0 == 3.0, "read from the last row"
    combined = rows[2:] + 4.0 * (rows[:2] - rows[2:])
    expected = safe.correct(x_in[2:], sigma[2:], combined)
    steering.steer_outputs_(rows, CONDS, 4.0)
    after = rows[2:] + 4.0 * (rows[:2] - rows[2:])
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert steering.steer_combined(after) is after, "on_cfg_after_cfg leaves a steered step alone"
    assert len(steering.trace.steps) == 1 and steering.trace.steps[0].acted == 2
    with pytest.raises(RuntimeError, match=REQUIRE):
        steering.steer_outputs_(rows, CONDS, 4.0)  # the next step's outputs without its inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("alphas", [None, ALPHAS])
def test_combined_prediction_is_corrected_where_the_outputs_were_not(alphas, dtype):
    """Forks without on_cfg_denoised: on_cfg_after_cfg corrects the combined prediction instead (the
    images' own inputs are the last rows, after image 0's two AND rows and image 1's row)."""
    steering, safe, x_rows, rows = make(1)
    x_in = torch.cat([x_rows[:1], x_rows[:1], x_rows[1:2], x_rows[2:]])
    timesteps = torch.tensor([300.0, 300.0, 500.0, 300.0, 500.0])
    sigma = timesteps if alphas is not None else timesteps / 100
    combined = rows[:2].to(dtype)
    steering.capture(x_in, sigma)
    out = steering.steer_combined(combined, alphas)
    x_img, d = x_rows[2:], combined.float()
    if alphas is None:
        expected = safe.correct(x_img, sigma[-2:], d)
    else:
        a = ALPHAS[[300, 500]].float().reshape(2, 1, 1, 1)
        x0 = (x_img - (1 - a).sqrt() * d) / a.sqrt()
        x0_safe = safe.correct(x_img / a.sqrt(), ((1 - a) / a).sqrt().flatten(), x0)
        expected = (x_img - a.sqrt() * x0_safe) / (1 - a).sqrt()
    tolerance = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)
    assert out.dtype == dtype and len(steering.trace.steps) == 1
    assert steering.steer_combined(out) is out, "inputs are used once"


def test_without_captured_inputs_the_combined_prediction_is_returned_as_is():
    steering, _, _, rows = make(4)
    combined = rows[:2]
    assert steering.steer_combined(combined) is combined and steering.trace.steps == []


def test_outside_the_window_the_combined_prediction_is_returned_as_is():
    steering, safe, x_in, rows = make(2)
    safe.config = safe.config.replace(sigma_min=10.0)
    steering.capture(x_in, torch.full((4,), 2.0))
    combined = rows[:2]
    assert steering.steer_combined(combined) is combined
    assert steering.trace.steps[0].acted == 0


@pytest.mark.parametrize("x_in, sigma, message", [
    (torch.zeros(4), torch.zeros(4), r"\(4,\)"),
    (torch.zeros(4, 2), torch.zeros(4, 1), r"\(4, 1\)"),
    (torch.zeros(4, 2), torch.zeros(3), r"\(3,\)"),
])
def test_capture_rejects_inputs_it_cannot_read(x_in, sigma, message):
    steering, *_ = make()
    with pytest.raises(ValueError, match=message):
        steering.capture(x_in, sigma)


def test_outputs_must_match_the_inputs_row_for_row():
    steering, _, x_in, rows = make()
    steering.capture(x_in, torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="3 rows for 4 inputs"):
        steering.steer_outputs_(rows[:3], CONDS, 1.0)
    with pytest.raises(RuntimeError, match=REQUIRE):
        _ = Steering(steering.safe, GenerationTrace()).sigma0


def test_two_dimensional_inputs_are_accepted():
    steering = Steering(SafeDenoiser(torch.zeros(3, 5), None, SafeDenoiserConfig(mode="constant")), GenerationTrace())
    steering.capture(torch.ones(4, 5), torch.full((4,), 2.0))
    rows = torch.zeros(4, 5)
    steering.steer_outputs_(rows, CONDS, 1.0)
    assert steering.trace.steps[0].acted == 2


def test_each_correction_is_one_trace_step_in_order():
    steering, _, x_in, rows = make(3)
    for sigma in (3.0, 2.0, 1.0):
        steering.capture(x_in, torch.full((4,), sigma))
        steering.steer_outputs_(rows.clone(), CONDS, 1.0)
    assert [s.call for s in steering.trace.steps] == [0, 1, 2]
    assert [s.sigma for s in steering.trace.steps] == [3.0, 2.0, 1.0]


def paper_steering(**config) -> tuple[Steering, SafeDenoiser, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    bank = torch.randn(5, 2, 3, 3, generator=gen)
    safe = SafeDenoiser(bank, None, SafeDenoiserConfig(mode="paper", gate_margin=math.inf, **config))
    x = torch.randn(2, 2, 3, 3, generator=gen)
    return Steering(safe, GenerationTrace()), safe, torch.cat([x, x]), torch.randn(4, 2, 3, 3, generator=gen)


@pytest.mark.parametrize("mode, carry, kind, expected", [
    ("paper", True, "step", True), ("paper", True, None, False), ("paper", False, "step", False),
    ("constant", True, "heun", False),
])
def test_the_carry_is_set_for_the_paper_mode_on_supported_samplers(mode, carry, kind, expected):
    safe = SafeDenoiser(torch.zeros(2, 3), None, SafeDenoiserConfig(mode=mode, carry=carry))
    steering = Steering(safe, GenerationTrace())
    assert not steering.sampler_set
    steering.set_sampler(kind, 0.5, 3)
    assert steering.sampler_set and (steering.carry is not None) == expected
    if expected:
        assert (steering.carry.kind, steering.carry.eta) == (kind, 0.5)


def carried(safe, x_img, sigma, d, seed, steps_left):
    """d + factor * (correction + re-noising) for the first step of a pass (core/carry.py's formula)."""
    c = safe.correct(x_img, sigma, d)
    factor = sigma / (sigma - sigma * (0.03 / sigma) ** (1 / (steps_left - 1))) if steps_left > 1 else 1.0
    noise = torch.randn(2, 18, generator=torch.Generator().manual_seed(seed)).reshape(d.shape)
    return d + factor * (c - d + sigma * noise - (x_img - d))


@pytest.mark.parametrize("tick, total, steps_left", [(2, 10, 8), (0, 4, 4), (None, None, 1), (3, None, 1)])
def test_a_first_call_is_carried_with_the_steps_left_in_its_pass(tick, total, steps_left):
    steering, safe, x_in, rows = paper_steering()
    steering.set_sampler("step", 0.0, 7)
    steering.capture(x_in, torch.full((4,), 3.0), tick, total)
    before = rows[2:] + 2.0 * (rows[:2] - rows[2:])
    expected = carried(safe, x_in[2:], 3.0, before, 7, steps_left)
    steering.steer_outputs_(rows, CONDS, 2.0)
    torch.testing.assert_close(rows[2:] + 2.0 * (rows[:2] - rows[2:]), expected, rtol=1e-4, atol=1e-4)


def test_a_one_image_batch_is_carried_at_its_own_sigma():
    """One image, its cond and uncond rows: the carry reads the step's sigma from the only image row."""
    steering, safe, x_in, rows = paper_steering()
    steering.set_sampler("step", 0.0, 7)
    one_x, one_rows = x_in[1::2].clone(), rows[1::2].clone()  # image 1's cond row, then its uncond row
    steering.capture(one_x, torch.tensor([3.0, 3.0]), 0, 4)
    combined = one_rows[1:] + 2.0 * (one_rows[:1] - one_rows[1:])
    c = safe.correct(one_x[1:], 3.0, combined)
    factor = 3.0 / (3.0 - 3.0 * (0.03 / 3.0) ** (1 / 3))
    noise = torch.randn(1, 18, generator=torch.Generator().manual_seed(7)).reshape(combined.shape)
    expected = combined + factor * (c - combined + 3.0 * noise - (one_x[1:] - combined))
    torch.testing.assert_close(steering.steer_combined(combined), expected, rtol=1e-4, atol=1e-4)


def test_heuns_second_call_adds_the_rest_of_the_carry_in_place_of_its_own_correction():
    steering, safe, x_in, rows = paper_steering()
    steering.set_sampler("heun", 0.0, 7)
    steering.capture(x_in, torch.full((4,), 3.0), 0, 4)
    first = rows.clone()
    steering.steer_outputs_(first, CONDS, 1.0)
    change = (first[2:] - rows[2:]) / (3.0 / (3.0 - 3.0 * (0.03 / 3.0) ** (1 / 3)))
    steering.capture(x_in, torch.full((4,), 2.0), 0, 4, second=True)
    second = rows.clone()
    steering.steer_outputs_(second, CONDS, 1.0)
    factor = 3.0 / (3.0 - 3.0 * (0.03 / 3.0) ** (1 / 3))
    torch.testing.assert_close(second - rows, torch.cat([(factor - 1) * change] * 2), rtol=1e-4, atol=1e-4)
    steering.capture(x_in, torch.full((4,), 2.0), 1, 4, second=True)
    third = rows.clone()
    steering.steer_outputs_(third, CONDS, 1.0)
    assert torch.equal(third, rows), "nothing left to add"


def test_outside_the_window_a_carried_pass_leaves_the_prediction_alone():
    steering, _, x_in, rows = paper_steering(sigma_max=1.0)
    steering.set_sampler("step", 0.0, 7)
    steering.capture(x_in, torch.full((4,), 3.0), 0, 4)
    combined = rows[:2]
    assert steering.steer_combined(combined) is combined
