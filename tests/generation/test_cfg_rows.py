"""In-place steering of the WebUI's raw rows equals correcting the combined prediction."""

from __future__ import annotations

import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.core.schedules import eps_to_x0, timestep_to_sigma, vp_to_k
from lib_safe_denoiser.generation.cfg_rows import combine_cfg, steer_rows_

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
# image 0 has two AND-subprompts (rows 0, 1), image 1 one (row 2); uncond rows 3, 4
CONDS = [[(0, 0.7), (1, 0.3)], [(2, 1.0)]]


def _setup(seed: int):
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(6, 4, 4, 4, generator=gen)
    sd = SafeDenoiser(bank, torch.randn(20, 4, 4, 4, generator=gen),
                      SafeDenoiserConfig(mode="odds", strength=2.0, prior=0.5))
    x = torch.randn(2, 4, 4, 4, generator=gen)
    x_in = torch.cat([x[0:1], x[0:1], x[1:2], x])
    x_out = torch.randn(5, 4, 4, 4, generator=gen)
    return sd, x_in, x_out


def test_k_diffusion_rows_steer_the_combined_prediction():
    sd, x_in, x_out = _setup(0)
    sigma_in = torch.full((5,), 1.5)
    before = combine_cfg(x_out, CONDS, 7.0)
    expected = sd.correct(x_in[-2:], 1.5, before)
    rows_before = x_out.clone()
    delta = steer_rows_(x_out, x_in, sigma_in, CONDS, 7.0, sd.correct)
    assert delta is not None and delta.abs().sum() > 0
    torch.testing.assert_close(combine_cfg(x_out, CONDS, 7.0), expected, rtol=1e-4, atol=1e-4)
    # the first cond row of each image (what the preview and Interrupt show) moved by the same delta
    torch.testing.assert_close(x_out[[0, 1, 3]] - rows_before[[0, 1, 3]], delta[0].expand(3, -1, -1, -1))
    torch.testing.assert_close(x_out[[2, 4]] - rows_before[[2, 4]], delta[1].expand(2, -1, -1, -1))


def test_timestep_sampler_eps_rows():
    sd, x_vp, eps_out = _setup(1)
    t = torch.full((5,), 400.0)
    a = ALPHAS[400]
    before = combine_cfg(eps_out, CONDS, 5.0)
    x0 = eps_to_x0(x_vp[-2:], before, a)
    expected_x0 = sd.correct(vp_to_k(x_vp[-2:], a), timestep_to_sigma(torch.full((2,), 400.0), ALPHAS), x0)
    steer_rows_(eps_out, x_vp, t, CONDS, 5.0, sd.correct, alphas_cumprod=ALPHAS)
    got_x0 = eps_to_x0(x_vp[-2:], combine_cfg(eps_out, CONDS, 5.0), a)
    torch.testing.assert_close(got_x0, expected_x0, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got_x0, x0)


def test_outside_the_window_nothing_changes():
    sd, x_in, x_out = _setup(2)
    sd.config = sd.config.replace(sigma_min=5.0)
    copy = x_out.clone()
    assert steer_rows_(x_out, x_in, torch.full((5,), 1.0), CONDS, 7.0, sd.correct) is None
    assert torch.equal(x_out, copy)
