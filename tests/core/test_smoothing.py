"""The odds and constant modes' bandwidth floor (``smoothing``), against the exact denoisers of the
smoothed sets: each image a Gaussian of width h, noised to sigma, is a Gaussian of variance
sigma^2 + h^2 around it, whose posterior mean of x0 is b + h^2 / (sigma^2 + h^2) (x_t - b)."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig


def smoothed_denoiser(x_t: torch.Tensor, points: torch.Tensor, sigma: float, h: float) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ (1/N) sum N(b_n, h^2 I) and x_t = x0 + sigma n, computed point by point."""
    var = sigma**2 + h**2
    sq = ((x_t[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    w = torch.softmax(-sq / (2 * var), dim=1)
    means = points[None, :, :] + (h**2 / var) * (x_t[:, None, :] - points[None, :, :])
    return (w[:, :, None] * means).sum(1)


def _sets(seed: int):
    gen = torch.Generator().manual_seed(seed)
    unsafe = torch.randn(5, 3, generator=gen, dtype=torch.float64) + 2.5
    safe = torch.randn(25, 3, generator=gen, dtype=torch.float64)
    x_t = torch.cat([unsafe[:3], safe[:5]]) + 0.8 * torch.randn(8, 3, generator=gen, dtype=torch.float64)
    return unsafe, safe, x_t


@pytest.mark.parametrize("safe_mean", ["reference", "model"])
@pytest.mark.parametrize("sigma, h", [(0.2, 0.5), (0.2, 1.5), (1.0, 1.0), (3.0, 2.0)])
def test_corrected_smoothed_data_denoiser_is_the_smoothed_safe_one(safe_mean: str, sigma: float, h: float):
    """The theorem holds for the smoothed distributions: corrected D_data equals D_safe (to 1e-9 in the
    reference form; the model form loses log10(beta) digits to cancellation, as without smoothing)."""
    unsafe, safe, x_t = _sets(3)
    data = torch.cat([unsafe, safe])
    cfg = SafeDenoiserConfig(mode="odds", strength=1.0, prior=unsafe.shape[0] / data.shape[0], cap=1e300,
                             min_beta=0.0, safe_mean=safe_mean, smoothing=h)
    sd = SafeDenoiser(unsafe, safe, cfg)
    got = sd.correct(x_t, sigma, smoothed_denoiser(x_t, data, sigma, h))
    tolerance = 1e-9 if safe_mean == "reference" else 1e-6 * float(sd.last_diagnostics.beta.max().clamp_min(1))
    torch.testing.assert_close(got, smoothed_denoiser(x_t, safe, sigma, h), rtol=0, atol=tolerance)


def test_smoothing_lifts_the_odds_of_a_concept_point_nearer_a_safe_image():
    """The concept's point q lies between two bank images (1.2 away) but 1.0 from a safe image: at low
    noise the bare sets (h = 0) read it as safe, odds ~ e^-22 of the prior's; with a floor of the
    images' spacing the odds are those of the two distances at variance sigma^2 + h^2."""
    unsafe = torch.tensor([[1.2, 0.0, 0.0], [-1.2, 0.0, 0.0]], dtype=torch.float64)
    safe = torch.tensor([[0.0, 1.0, 0.0], [0.0, -6.0, 0.0], [0.0, 0.0, 7.0]], dtype=torch.float64)
    q = torch.zeros(1, 3, dtype=torch.float64)
    sigma, prior = 0.1, 0.1
    for h in (0.0, 1.0):
        sd = SafeDenoiser(unsafe, safe, SafeDenoiserConfig(mode="odds", prior=prior, smoothing=h, min_beta=0.0))
        sd.correct(q, sigma, q)
        var = sigma**2 + h**2
        log_bank = torch.logsumexp(-(unsafe**2).sum(1) / (2 * var), 0) - math.log(2)
        log_safe = torch.logsumexp(-(safe**2).sum(1) / (2 * var), 0) - math.log(3)
        expected = math.log(prior / (1 - prior)) + float(log_bank - log_safe)
        assert float(sd.last_diagnostics.log_odds[0]) == pytest.approx(expected, abs=1e-9)
        assert (expected < -20) if h == 0 else (expected > -2.5)


def test_constant_mode_pushes_from_the_smoothed_bank_mean():
    unsafe, safe, x_t = _sets(5)
    d = x_t * 0.5
    cfg = SafeDenoiserConfig(mode="constant", strength=0.7, smoothing=0.9, min_beta=0.0)
    got = SafeDenoiser(unsafe, None, cfg).correct(x_t, 0.6, d)
    torch.testing.assert_close(got, d + 0.7 * (d - smoothed_denoiser(x_t, unsafe, 0.6, 0.9)), rtol=0, atol=1e-9)


def test_paper_mode_ignores_smoothing():
    gen = torch.Generator().manual_seed(6)
    bank = torch.randn(6, 4, 2, 2, generator=gen)
    x = torch.randn(3, 4, 2, 2, generator=gen)
    cfg = SafeDenoiserConfig(mode="paper", gate_margin=float("inf"))
    plain = SafeDenoiser(bank, None, cfg).correct(x, 5.0, x * 0.3)
    smoothed = SafeDenoiser(bank, None, cfg.replace(smoothing=2.0)).correct(x, 5.0, x * 0.3)
    assert torch.equal(plain, smoothed)
