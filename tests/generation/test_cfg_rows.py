"""In-place steering of the WebUI's raw rows: the combined prediction, written out by hand as the
WebUI's CFGDenoiser.combine_denoised computes it, is what gets corrected."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.generation.cfg_rows import combine_cfg, correction_delta, steer_rows_

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
CONDS = [[(0, 0.7), (1, 0.3)], [(2, 1.0)]]
"""Image 0 has two AND-subprompts (rows 0, 1), image 1 one (row 2); the uncond rows are 3 and 4."""
SIGMAS = torch.tensor([1.5, 1.5, 2.5, 1.5, 2.5])
"""Per row, its image's noise level (image 0: 1.5, image 1: 2.5)."""
TIMESTEPS = torch.tensor([400.0, 400.0, 650.0, 400.0, 650.0])


def webui_combination(x_out: torch.Tensor, scale: float) -> torch.Tensor:
    """combine_denoised for CONDS, term by term: uncond + sum_j w_j * scale * (cond_j - uncond)."""
    u0, u1 = x_out[3], x_out[4]
    image0 = u0 + 0.7 * scale * (x_out[0] - u0) + 0.3 * scale * (x_out[1] - u0)
    image1 = u1 + 1.0 * scale * (x_out[2] - u1)
    return torch.stack([image0, image1])


def _setup(seed: int, mode: str = "constant"):
    """A denoiser whose correction depends on the prediction itself (constant: D + beta (D - E_u)),
    so a wrong combined prediction gives a wrong result; inputs in the WebUI's row layout."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(6, 4, 4, 4, generator=gen)
    # paper: always on, its bandwidth as it is (CFG 7 predictions of these tiny latents are far from the bank)
    config = SafeDenoiserConfig(mode=mode, strength=0.8, prior=0.5, gate_margin=math.inf, reference_dim=0)
    sd = SafeDenoiser(bank, torch.randn(20, 4, 4, 4, generator=gen), config)
    x = torch.randn(2, 4, 4, 4, generator=gen)
    x_in = torch.cat([x[0:1], x[0:1], x[1:2], x])
    x_out = torch.randn(5, 4, 4, 4, generator=gen)
    return sd, x_in, x_out


def test_combine_cfg_on_numbers_worked_by_hand():
    rows = torch.tensor([1.0, 3.0, 5.0, 10.0, 20.0]).reshape(5, 1)
    # image 0: 10 + 2 * (0.7 * (1 - 10) + 0.3 * (3 - 10)) = -6.8; image 1: 20 + 2 * (5 - 20) = -10
    assert combine_cfg(rows, CONDS, 2.0).flatten().tolist() == pytest.approx([-6.8, -10.0])
    assert rows.flatten().tolist() == [1.0, 3.0, 5.0, 10.0, 20.0], "the rows are not touched"


def test_combine_cfg_is_the_webuis_combination():
    _, _, x_out = _setup(0)
    for scale in (1.0, 7.0):
        torch.testing.assert_close(combine_cfg(x_out, CONDS, scale), webui_combination(x_out, scale))


@pytest.mark.parametrize("mode", ["constant", "paper", "odds"])
def test_k_diffusion_rows_steer_the_combined_prediction(mode):
    sd, x_in, x_out = _setup(1, mode)
    before, rows_before = webui_combination(x_out, 7.0), x_out.clone()
    expected = sd.correct(x_in[-2:], SIGMAS[-2:], before)
    delta = steer_rows_(x_out, x_in, SIGMAS, CONDS, 7.0, sd.correct)
    assert delta is not None and delta.abs().amin(dim=(1, 2, 3)).min() > 0, "both images corrected"
    torch.testing.assert_close(webui_combination(x_out, 7.0), expected, rtol=1e-5, atol=1e-5)
    # every row of an image moved by that image's delta (the preview and Interrupt read the cond rows)
    torch.testing.assert_close(x_out[[0, 1, 3]] - rows_before[[0, 1, 3]], delta[0].expand(3, -1, -1, -1))
    torch.testing.assert_close(x_out[[2, 4]] - rows_before[[2, 4]], delta[1].expand(2, -1, -1, -1))


def test_the_scale_and_weights_reach_the_correction():
    """Steering computed for another scale gives another (wrong) combined prediction."""
    sd, x_in, x_out = _setup(2)
    right, wrong = x_out.clone(), x_out.clone()
    steer_rows_(right, x_in, SIGMAS, CONDS, 7.0, sd.correct)
    steer_rows_(wrong, x_in, SIGMAS, CONDS, 1.0, sd.correct)
    expected = sd.correct(x_in[-2:], SIGMAS[-2:], webui_combination(x_out, 7.0))
    torch.testing.assert_close(webui_combination(right, 7.0), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(webui_combination(wrong, 7.0), expected, atol=1e-3)


def test_timestep_sampler_eps_rows():
    """eps rows and DDPM timesteps: x0 = (x - sqrt(1 - a) eps) / sqrt(a), corrected in the k-diffusion
    form (x / sqrt(a) at sigma = sqrt((1 - a) / a)), then mapped back to eps."""
    sd, x_vp, eps_out = _setup(3)
    a = ALPHAS[[400, 650]].float().reshape(2, 1, 1, 1)
    x_img = x_vp[-2:]
    x0 = (x_img - (1 - a).sqrt() * webui_combination(eps_out, 5.0)) / a.sqrt()
    sigma_k = ((1 - a) / a).sqrt().flatten()
    expected_x0 = sd.correct(x_img / a.sqrt(), sigma_k, x0)
    expected_eps = (x_img - a.sqrt() * expected_x0) / (1 - a).sqrt()
    delta = steer_rows_(eps_out, x_vp, TIMESTEPS, CONDS, 5.0, sd.correct, alphas_cumprod=ALPHAS)
    torch.testing.assert_close(webui_combination(eps_out, 5.0), expected_eps, rtol=1e-4, atol=1e-4)
    # a change d of x0 is a change -sqrt(a / (1 - a)) d of eps
    torch.testing.assert_close(delta, -(a / (1 - a)).sqrt() * (expected_x0 - x0), rtol=1e-4, atol=1e-4)


def test_fractional_timesteps_interpolate_the_schedule():
    """UniPC asks for fractional timesteps: alpha_bar is interpolated linearly between its neighbours."""
    sd, x_vp, eps_out = _setup(4)
    t = torch.tensor([400.25, 650.5])
    a = (ALPHAS[[400, 650]] * torch.tensor([0.75, 0.5], dtype=torch.float64)
          + ALPHAS[[401, 651]] * torch.tensor([0.25, 0.5], dtype=torch.float64)).float().reshape(2, 1, 1, 1)
    combined = eps_out[:2]
    x0 = (x_vp[-2:] - (1 - a).sqrt() * combined) / a.sqrt()
    expected_x0 = sd.correct(x_vp[-2:] / a.sqrt(), ((1 - a) / a).sqrt().flatten(), x0)
    delta = correction_delta(combined, x_vp[-2:], t, sd.correct, alphas_cumprod=ALPHAS)
    assert delta.dtype == torch.float32
    torch.testing.assert_close(delta, -(a / (1 - a)).sqrt() * (expected_x0 - x0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alphas", [None, ALPHAS])
def test_outside_the_window_nothing_changes(alphas):
    sd, x_in, x_out = _setup(5)
    sd.config = sd.config.replace(sigma_min=50.0)
    copy = x_out.clone()
    sigma = TIMESTEPS if alphas is not None else SIGMAS
    assert steer_rows_(x_out, x_in, sigma, CONDS, 7.0, sd.correct, alphas_cumprod=alphas) is None
    assert torch.equal(x_out, copy)


def test_half_precision_rows_get_the_delta_in_their_dtype():
    sd, x_in, x_out = _setup(6)
    rows = x_out.half()
    delta = steer_rows_(rows, x_in.half(), SIGMAS.half(), CONDS, 7.0, sd.correct)
    assert rows.dtype == torch.float16 and delta.dtype == torch.float16
    expected = sd.correct(x_in[-2:], SIGMAS[-2:], webui_combination(x_out.half().float(), 7.0))
    torch.testing.assert_close(webui_combination(rows.float(), 7.0), expected, rtol=1e-2, atol=1e-2)


def test_correction_delta_is_float32_and_sigma_reaches_the_correction_as_float64():
    seen = {}

    def correct(x_t, sigma, denoised):
        seen["sigma"], seen["x_t"], seen["denoised"] = sigma, x_t, denoised
        return denoised + 1.0

    combined, x = torch.zeros(2, 3, dtype=torch.float16), torch.ones(2, 3, dtype=torch.float16)
    delta = correction_delta(combined, x, torch.tensor([1.5, 2.5]), correct)
    assert delta.dtype == torch.float32 and torch.equal(delta, torch.ones(2, 3))
    assert seen["sigma"].dtype == torch.float64 and seen["sigma"].tolist() == [1.5, 2.5]
    assert seen["x_t"].dtype == torch.float32 and seen["denoised"].dtype == torch.float32
    assert correction_delta(combined, x, torch.tensor([1.5, 2.5]), lambda x_t, s, d: d) is None
    assert correction_delta(combined, x, torch.tensor([400.0, 9.0]), lambda x_t, s, d: d, alphas_cumprod=ALPHAS) \
        is None
    assert math.isclose(float(seen["sigma"][1]), 2.5)
