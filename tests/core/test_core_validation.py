"""Bad input fails at construction with a message that says what is wrong."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig, sigma_window_for_steps, timestep_to_sigma
from lib_safe_denoiser.core.schedules import eps_to_x0, sigma_to_timestep, vp_to_k, x0_to_eps


def test_shape_mismatch_names_both_shapes():
    sd = SafeDenoiser(torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(2, 4, 16, 16\).*\(4, 8, 8\)"):
        sd.correct(torch.randn(2, 4, 16, 16), 1.0, torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match="denoised has shape"):
        sd.correct(torch.randn(2, 4, 8, 8), 1.0, torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="sigma has 3 values"):
        sd.correct(torch.randn(2, 4, 8, 8), torch.ones(3), torch.randn(2, 4, 8, 8))


def test_reference_shape_mismatch():
    with pytest.raises(ValueError, match=r"reference set latents have shape \(4, 4, 4\).*\(4, 8, 8\)"):
        SafeDenoiser(torch.randn(3, 4, 8, 8), torch.randn(3, 4, 4, 4))


@pytest.mark.parametrize("bank, message", [
    (torch.empty(0, 4, 8, 8), "empty"),
    (torch.tensor([[1.0, math.nan], [0.0, 0.0]]), "NaN or inf values in 1 of its 2"),
    (torch.tensor([[1.0, math.inf]]), "NaN or inf"),
    (torch.ones(5, dtype=torch.float32), "at least one feature dimension"),
    (torch.ones(2, 3, dtype=torch.int64), "floating-point"),
])
def test_bad_banks_fail_at_construction(bank, message):
    with pytest.raises(ValueError, match=message):
        SafeDenoiser(bank, None, SafeDenoiserConfig(mode="paper"))


def test_odds_needs_a_reference():
    with pytest.raises(ValueError, match="needs a reference set"):
        SafeDenoiser(torch.randn(3, 2), None, SafeDenoiserConfig(mode="odds"))


@pytest.mark.parametrize("changes, field", [
    ({"mode": "fast"}, "mode"),
    ({"prior": 1.0}, "prior"),
    ({"prior": 0.0}, "prior"),
    ({"strength": -1.0}, "strength"),
    ({"cap": 0.0}, "cap"),
    ({"sigma_min": 2.0, "sigma_max": 1.0}, "sigma window"),
    ({"bandwidth": 0.0}, "bandwidth"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"strength": math.nan}, "strength"),
    ({"strength": "3"}, "strength"),
    ({"reference_kind": "model"}, "reference_kind"),
    ({"reference_kind": "data"}, "safe_mean='model'"),
    ({"safe_mean": "bank"}, "safe_mean"),
    ({"smoothing": -0.1}, "smoothing"),
    ({"smoothing": math.inf}, "smoothing"),
    ({"smoothing": math.nan}, "smoothing"),
    ({"smoothing": True}, "smoothing"),
])
def test_config_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        SafeDenoiserConfig(**changes)


def test_timestep_helpers_round_trip():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    sig = timestep_to_sigma(torch.tensor([780.0, 999.0]), ac)
    assert sig[0] == pytest.approx(4.67, abs=0.02) and sig[1] == pytest.approx(14.6, abs=0.05)
    torch.testing.assert_close(sigma_to_timestep(sig, ac), torch.tensor([780.0, 999.0], dtype=torch.float64))
    x0 = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x0)
    a = ac[[100, 700]]
    x = a.sqrt().reshape(-1, 1, 1, 1) * x0 + (1 - a).sqrt().reshape(-1, 1, 1, 1) * eps
    torch.testing.assert_close(eps_to_x0(x, eps, a), x0)
    torch.testing.assert_close(x0_to_eps(x, x0, a), eps)
    k_sig = timestep_to_sigma(torch.tensor([100.0, 700.0]), ac).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(vp_to_k(x, a), x0 + k_sig * eps)


def test_step_window_maps_to_sigmas():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    assert sigma_window_for_steps(sigmas, 0.0, 0.4) == (5.0, 10.0)
    assert sigma_window_for_steps(sigmas, 0.4, 1.0) == (0.5, 2.0)
    assert sigma_window_for_steps(sigmas, 0.5, 0.5) == (math.inf, math.inf)
    with pytest.raises(ValueError):
        sigma_window_for_steps(sigmas, 0.6, 0.2)
