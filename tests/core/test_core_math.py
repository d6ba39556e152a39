"""The correction math against brute-force float64 formulas and the theorem itself."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.core.kernel import gaussian_logits, kernel_stats, laplace_logits


def brute_force(x: torch.Tensor, bank: torch.Tensor, sigma: torch.Tensor):
    """Kernel log-sum-exp and posterior mean by broadcasting, in float64 (small sizes only)."""
    diff = x.double()[:, None, :] - bank.double()[None, :, :]
    logits = -(diff**2).sum(-1) / (2 * sigma.double()[:, None] ** 2)
    weights = torch.softmax(logits, dim=1)
    return torch.logsumexp(logits, dim=1), weights @ bank.double()


def stats_of(x: torch.Tensor, bank: torch.Tensor, sigma: torch.Tensor, chunk: int, k: int = 3):
    return kernel_stats(x, bank, (bank * bank).sum(1), gaussian_logits(sigma), chunk_size=chunk,
                        want_mean=True, k_nearest=k)


def test_kernel_mean_and_log_density_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(37, 20, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 20, generator=gen, dtype=torch.float64) * 1.5
    sigma = torch.tensor([0.3, 0.7, 1.0, 2.0, 5.0], dtype=torch.float64)
    lse, mean = brute_force(x, bank, sigma)
    got = stats_of(x, bank, sigma, chunk=8)
    torch.testing.assert_close(got.lse, lse, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(got.mean, mean, rtol=1e-10, atol=1e-10)
    dist = torch.cdist(x, bank)
    torch.testing.assert_close(got.nearest_sq_dist.sqrt(), dist.topk(3, largest=False).values)
    assert torch.equal(got.nearest_index, dist.topk(3, largest=False).indices)


def test_float32_path_agrees_with_float64():
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(64, 256, generator=gen)
    x = torch.randn(4, 256, generator=gen)
    sigma = torch.full((4,), 2.0)
    lse, mean = brute_force(x, bank, sigma)
    got = stats_of(x, bank, sigma, chunk=16)
    torch.testing.assert_close(got.lse.double(), lse, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got.mean.double(), mean, rtol=1e-4, atol=1e-4)


def test_laplace_kernel_matches_official_formula():
    gen = torch.Generator().manual_seed(2)
    bank = torch.randn(10, 16, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    k = torch.exp(-torch.cdist(x, bank) / (2 * 3.15**2))
    got = kernel_stats(x, bank, (bank * bank).sum(1), laplace_logits(3.15), chunk_size=4, want_mean=True)
    torch.testing.assert_close(got.lse.exp(), k.sum(1))
    torch.testing.assert_close(got.mean, (k @ bank) / k.sum(1, keepdim=True))


def test_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(3)
    bank = torch.randn(1000, 64, generator=gen)
    x = torch.randn(6, 64, generator=gen) * 3
    sigma = torch.linspace(0.1, 4.0, 6)
    whole = stats_of(x, bank, sigma, chunk=1000, k=5)
    for chunk in (1, 7, 128, 999):
        part = stats_of(x, bank, sigma, chunk=chunk, k=5)
        torch.testing.assert_close(part.lse, whole.lse, rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(part.mean, whole.mean, rtol=1e-5, atol=1e-5)
        assert torch.equal(part.nearest_index, whole.nearest_index)


def test_stable_at_sd_size_and_tiny_sigma():
    """D = 16384 and sigma = 0.02: raw exp would underflow every weight to zero."""
    gen = torch.Generator().manual_seed(4)
    bank = torch.randn(50, 4, 64, 64, generator=gen)
    far = torch.randn(2, 4, 64, 64, generator=gen)  # ~181 units from every bank latent
    near = bank[7:8] + 0.01 * torch.randn(1, 4, 64, 64, generator=gen)
    x = torch.cat([far, near])
    assert float(torch.exp(torch.tensor(-(180.0**2) / (2 * 0.02**2)))) == 0.0  # the trap
    sd = SafeDenoiser(bank, bank[:10] * 0.5, SafeDenoiserConfig(mode="constant", strength=0.5))
    out = sd.correct(x, 0.02, x)
    assert torch.isfinite(out).all()
    flat = bank.reshape(50, -1)
    for row in range(3):
        nearest = torch.cdist(x[row].reshape(1, -1), flat).argmin()
        # the kernel mean collapses onto the nearest bank latent instead of a zero vector
        expected = x[row] + 0.5 * (x[row] - bank[nearest])
        torch.testing.assert_close(out[row], expected, rtol=1e-4, atol=1e-3)
    assert sd.last_diagnostics.nearest_index[2, 0] == 7


def _mixture_points(seed: int, dim: int):
    gen = torch.Generator().manual_seed(seed)
    unsafe = torch.randn(6, dim, generator=gen, dtype=torch.float64) + 3.0
    safe = torch.randn(30, dim, generator=gen, dtype=torch.float64)
    return unsafe, safe


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 8.0])
def test_theorem_identity_with_exact_densities(sigma: float):
    """Empirical distributions are Gaussian mixtures once noised; the corrected exact data denoiser
    must equal the exact safe denoiser (the posterior mean over the safe points) to 1e-6."""
    unsafe, safe = _mixture_points(5, 3)
    data = torch.cat([unsafe, safe])
    z = unsafe.shape[0] / data.shape[0]
    gen = torch.Generator().manual_seed(6)
    x_t = data[torch.randint(0, data.shape[0], (16,), generator=gen)] + sigma * torch.randn(
        16, 3, generator=gen, dtype=torch.float64)
    sig = torch.full((16,), sigma, dtype=torch.float64)
    _, d_data = brute_force(x_t, data, sig)
    _, d_safe = brute_force(x_t, safe, sig)
    cfg = SafeDenoiserConfig(mode="odds", strength=1.0, prior=z, cap=1e300, min_beta=0.0, safe_mean="model")
    sd = SafeDenoiser(unsafe, safe, cfg)
    got = sd.correct(x_t, sigma, d_data)
    # (1 + beta) D - beta E_u loses log10(beta) digits to cancellation: compare where float64 can
    # hold 1e-6 (a sample sitting on the bank at low noise has beta ~ 1e50; the cap exists for it)
    usable = sd.last_diagnostics.beta < 1e6
    assert usable.sum() >= 10
    torch.testing.assert_close(got[usable], d_safe[usable], rtol=0, atol=1e-6)


def test_pooled_reference_gives_the_same_safe_denoiser():
    """With the data itself as reference (reference_kind='data'), pi/(1-pi) equals the odds."""
    unsafe, safe = _mixture_points(7, 2)
    data = torch.cat([unsafe, safe])
    z = unsafe.shape[0] / data.shape[0]
    x_t = torch.tensor([[0.5, 0.5], [2.0, 2.5], [-1.0, 0.0]], dtype=torch.float64)
    sig = torch.full((3,), 1.2, dtype=torch.float64)
    _, d_data = brute_force(x_t, data, sig)
    _, d_safe = brute_force(x_t, safe, sig)
    cfg = SafeDenoiserConfig(mode="odds", prior=z, cap=1e12, min_beta=0.0, reference_kind="data",
                             safe_mean="model")
    got = SafeDenoiser(unsafe, data, cfg).correct(x_t, 1.2, d_data)
    torch.testing.assert_close(got, d_safe, rtol=0, atol=1e-6)


def test_odds_beta_is_capped_and_scaled():
    unsafe, safe = _mixture_points(8, 2)
    cfg = SafeDenoiserConfig(mode="odds", strength=2.0, prior=0.5, cap=10.0)
    sd = SafeDenoiser(unsafe, safe, cfg)
    sd.correct(unsafe[:2].clone(), 0.05, unsafe[:2].clone())  # on the bank: odds huge
    assert torch.allclose(sd.last_diagnostics.beta, torch.full((2,), 20.0, dtype=torch.float64))
    assert (sd.last_diagnostics.log_odds > math.log(10.0)).all()  # reported uncapped


def test_reference_form_is_the_same_identity_and_bounded():
    """D + pi (E_safe - E_u) equals D + beta (D - E_u) with exact means, and stays finite deep in the bank."""
    unsafe, safe = _mixture_points(10, 2)
    data = torch.cat([unsafe, safe])
    z = unsafe.shape[0] / data.shape[0]
    x_t = torch.cat([safe[:3] + 0.4, unsafe[:2] + 0.01])
    sig = torch.full((5,), 0.7, dtype=torch.float64)
    _, d_data = brute_force(x_t, data, sig)
    _, d_safe = brute_force(x_t, safe, sig)
    cfg = SafeDenoiserConfig(mode="odds", prior=z, cap=1e300, min_beta=0.0, safe_mean="reference")
    got = SafeDenoiser(unsafe, safe, cfg).correct(x_t, 0.7, d_data)
    torch.testing.assert_close(got, d_safe, rtol=0, atol=1e-9)


def test_paper_mode_matches_the_official_recipe():
    gen = torch.Generator().manual_seed(9)
    bank = torch.randn(12, 4, 4, 4, generator=gen)
    x0 = torch.randn(2, 4, 4, 4, generator=gen)
    cfg = SafeDenoiserConfig(mode="paper", scale=0.33, bandwidth=3.15, gate_margin=1.6, sigma_min=4.67,
                             reference_dim=4 * 4 * 4)  # the recipe at this latent size
    sd = SafeDenoiser(bank, None, cfg)
    out = sd.correct(torch.zeros_like(x0), 10.0, x0)
    projected = (bank / bank.norm(dim=1, keepdim=True)).reshape(12, -1).double()  # each channel vector a unit
    k = torch.exp(-torch.cdist(x0.reshape(2, -1).double(), projected) / (2 * 3.15**2))
    e_u = (k @ projected) / (k.sum(1, keepdim=True) + 1e-8)
    torch.testing.assert_close(out.reshape(2, -1).double(), x0.reshape(2, -1).double() - 0.33 * e_u,
                               rtol=1e-5, atol=1e-5)
    # gate calibrated on the clean bank: each latent's kernel sum includes itself, so >= 1
    assert sd.gate_threshold is not None and sd.gate_threshold >= 1.0
    # below the window (t < 780 for SD 1.x) nothing happens
    assert sd.correct(torch.zeros_like(x0), 3.0, x0) is x0


def test_paper_gate_closes_far_from_the_bank():
    bank = torch.zeros(3, 8)
    cfg = SafeDenoiserConfig(mode="paper", bandwidth=1.0, gate_margin=0.5, reference_dim=0)
    sd = SafeDenoiser(bank, None, cfg)
    assert sd.calibrate_gate(0.0) == pytest.approx(3.0)
    x0 = torch.stack([torch.full((8,), 0.01), torch.full((8,), 10.0)])
    out = sd.correct(x0, 1.0, x0)
    assert sd.last_diagnostics.acted.tolist() == [True, False]
    assert torch.equal(out[1], x0[1])


def test_window_sigma_zero_and_inputs_untouched():
    bank = torch.randn(5, 3, 2, 2)
    ref = torch.randn(9, 3, 2, 2)
    sd = SafeDenoiser(bank, ref, SafeDenoiserConfig(strength=5.0, sigma_min=0.5, sigma_max=2.0, prior=0.5))
    x = bank[:4] + 0.01
    d = bank[:4].clone()
    x_copy, d_copy = x.clone(), d.clone()
    out = sd.correct(x, torch.tensor([0.0, -1.0, 3.0, 1.0]), d)
    assert torch.equal(x, x_copy) and torch.equal(d, d_copy)
    assert torch.equal(out[:3], d[:3])
    assert not torch.equal(out[3], d[3])
    assert sd.last_diagnostics.in_window.tolist() == [False, False, False, True]
    assert sd.correct(x, 0.0, d) is d


def test_dtype_and_layout_preserved():
    bank = torch.randn(5, 4, 3, 3)
    sd = SafeDenoiser(bank, bank + 1, SafeDenoiserConfig(prior=0.5))
    x = bank[:2].half()
    d = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # non-contiguous input
    out = sd.correct(x, 0.5, d)
    assert out.dtype == torch.float16 and out.shape == d.shape
    ref = sd.correct(x.float(), 0.5, d.float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
