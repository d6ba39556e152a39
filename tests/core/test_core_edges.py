"""The documented edges of the correction math: window bounds, thresholds, clamps, dtypes, the
gate's calibration and the error messages, each against a value worked out independently."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.core.denoiser import CALIBRATION_BATCH, PAPER_EPS
from lib_safe_denoiser.core.kernel import NEGLIGIBLE_LOG_WEIGHT, gaussian_logits, kernel_stats, laplace_logits
from lib_safe_denoiser.core.schedules import (
    alpha_bar_at,
    eps_to_x0,
    karras_sigmas,
    sigma_to_timestep,
    sigma_window_for_steps,
    timestep_to_sigma,
    x0_to_eps,
)

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)


def paper_config(**fields) -> SafeDenoiserConfig:
    """The paper mode with its kernel at the bandwidth given (no scaling to the latent size)."""
    return SafeDenoiserConfig(mode="paper", reference_dim=0, **fields)


def _points(seed: int, n: int, dim: int = 4, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _brute_means(x: torch.Tensor, bank: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-kernel log-sum-exp and posterior mean, by broadcasting in float64."""
    logits = -((x.double()[:, None] - bank.double()[None]) ** 2).sum(-1) / (2 * sigma**2)
    return torch.logsumexp(logits, 1), torch.softmax(logits, 1) @ bank.double()


# ------------------------------------------------------------------------------------ inputs
def test_sets_that_are_not_tensors_are_named():
    with pytest.raises(TypeError, match="negation bank must be a torch.Tensor, got list"):
        SafeDenoiser([[0.0, 1.0]])
    with pytest.raises(TypeError, match="reference set must be a torch.Tensor, got list"):
        SafeDenoiser(torch.zeros(2, 3), [[0.0, 1.0, 2.0]])


@pytest.mark.parametrize("which", ["negation bank", "reference set"])
def test_non_finite_latents_are_counted_by_set(which):
    bad = torch.zeros(3, 2, 2)
    bad[0, 0, 0], bad[1, 0, 0] = math.nan, math.inf
    args = (bad, None) if which == "negation bank" else (torch.zeros(3, 2, 2), bad)
    with pytest.raises(ValueError, match=f"{which} contains NaN or inf values in 2 of its 3 latents"):
        SafeDenoiser(*args, SafeDenoiserConfig(mode="constant"))


def test_odds_without_a_reference_says_what_to_pass():
    message = ("the odds mode needs a reference set (generic safe latents, or samples of the model with "
               "reference_kind='data'); pass reference=... or use the paper mode")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SafeDenoiser(torch.zeros(2, 3))


def test_a_new_denoiser_reports_its_sets_and_has_done_nothing_yet():
    sd = SafeDenoiser(torch.zeros(3, 5), torch.zeros(7, 5))
    assert (sd.n_negation, sd.n_reference, sd.shape) == (3, 7, (5,))
    assert sd.last_diagnostics is None and sd.gate_threshold is None
    assert SafeDenoiser(torch.zeros(3, 5), None, paper_config()).n_reference == 0


def test_input_errors_name_the_expected_shapes():
    sd = SafeDenoiser(torch.zeros(3, 4, 2, 2), None, SafeDenoiserConfig(mode="constant"))
    with pytest.raises(ValueError, match=r"\(expected \[B, 4, 2, 2\]\)"):
        sd.correct(torch.zeros(2, 4, 2, 3), 1.0, torch.zeros(2, 4, 2, 3))
    with pytest.raises(ValueError, match="sigma has 3 values for a batch of 2 rows"):
        sd.correct(torch.zeros(2, 4, 2, 2), torch.ones(3), torch.zeros(2, 4, 2, 2))


def test_a_half_precision_bank_is_computed_in_float32():
    bank = _points(1, 6, 8, torch.float32).half()
    x = _points(2, 3, 8, torch.float32)
    cfg = SafeDenoiserConfig(mode="constant", strength=0.5)
    got = SafeDenoiser(bank, None, cfg).correct(x, 0.3, x)
    want = SafeDenoiser(bank.float(), None, cfg).correct(x, 0.3, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ window
def test_window_bounds_are_inclusive_and_sigma_zero_or_nan_is_outside():
    bank = _points(3, 5)
    sd = SafeDenoiser(bank, None, SafeDenoiserConfig(mode="constant", sigma_min=0.0, sigma_max=2.0))
    x = _points(4, 5)
    out = sd.correct(x, torch.tensor([0.0, math.nan, 2.0, 2.0000001, 1e-9], dtype=torch.float64), x)
    assert sd.last_diagnostics.in_window.tolist() == [False, False, True, False, True]
    assert torch.equal(out[[0, 1, 3]], x[[0, 1, 3]])
    sd.config = sd.config.replace(sigma_min=0.5)
    sd.correct(x[:2], torch.tensor([0.5, 0.4999999], dtype=torch.float64), x[:2])
    assert sd.last_diagnostics.in_window.tolist() == [True, False]


def test_rows_outside_the_window_report_no_nearest_entry():
    sd = SafeDenoiser(_points(5, 4), None, SafeDenoiserConfig(mode="constant", sigma_min=1.0, n_nearest=2))
    x = _points(6, 2)
    sd.correct(x, torch.tensor([0.5, 2.0]), x)
    diag = sd.last_diagnostics
    assert diag.nearest_index[0].tolist() == [-1, -1] and diag.nearest_distance[0].isnan().all()
    assert (diag.nearest_index[1] >= 0).all() and diag.nearest_index.dtype == torch.long


# ------------------------------------------------------------------------------------ thresholds
def test_a_beta_equal_to_min_beta_acts():
    x = _points(7, 2)
    sd = SafeDenoiser(_points(8, 3), None, SafeDenoiserConfig(mode="constant", strength=0.01, min_beta=0.01))
    sd.correct(x, 1.0, x)
    assert sd.last_diagnostics.acted.all()
    bank = _points(9, 3)
    odds = SafeDenoiser(bank, _points(10, 5) + 50, SafeDenoiserConfig(strength=2.0, cap=1.0, min_beta=2.0))
    odds.correct(bank[:2], 0.05, bank[:2])  # on the bank, far from the reference: beta = strength * cap
    assert odds.last_diagnostics.beta.tolist() == [2.0, 2.0] and odds.last_diagnostics.acted.all()
    paper = SafeDenoiser(bank, None, paper_config(scale=0.2, min_beta=0.2, gate_margin=math.inf))
    paper.correct(x, 1.0, x)
    assert paper.last_diagnostics.acted.all()


def test_pooled_odds_stay_finite_where_the_bank_outweighs_the_pool():
    """A pooled reference should hold the bank's kind of image; where it does not, pi is kept below 1."""
    bank = _points(11, 4)
    cfg = SafeDenoiserConfig(prior=0.5, cap=1.0, strength=2.0, reference_kind="data", safe_mean="model")
    sd = SafeDenoiser(bank, _points(12, 6) + 40, cfg)
    sd.correct(bank[:2], 0.1, bank[:2])
    assert sd.last_diagnostics.beta.tolist() == [2.0, 2.0]


@pytest.mark.parametrize("safe_mean", ["reference", "model"])
def test_the_safe_mean_comes_from_where_the_config_says(safe_mean):
    """reference: D + strength * pi (E_ref - E_u); model: D + beta (D - E_u), beta = strength * odds.
    With a prediction D that is not the exact posterior the two differ."""
    bank, ref = _points(13, 5), _points(14, 9) + 1.5
    x = torch.cat([bank[:2] + 0.3, ref[:2]])
    d = x * 0.8
    sigma, prior, strength = 0.9, 0.2, 1.5
    cfg = SafeDenoiserConfig(prior=prior, strength=strength, cap=1e6, min_beta=0.0, safe_mean=safe_mean)
    got = SafeDenoiser(bank, ref, cfg).correct(x, sigma, d)
    lse_u, e_u = _brute_means(x, bank, sigma)
    lse_r, e_r = _brute_means(x, ref, sigma)
    log_odds = math.log(prior / (1 - prior)) + (lse_u - math.log(5)) - (lse_r - math.log(9))
    if safe_mean == "reference":
        want = d + strength * torch.sigmoid(log_odds)[:, None] * (e_r - e_u)
    else:
        want = d + strength * log_odds.exp()[:, None] * (d - e_u)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------------ paper mode
def test_paper_shrink_matters_where_the_kernel_sum_is_tiny():
    """E_u = sum k x / (sum k + 1e-8): a prediction whose kernel sum is ~1e-8 gets about half the shift."""
    bank = torch.full((1, 4), 1.0, dtype=torch.float64)
    d = torch.tensor([[1.0 + 18.42, 1.0, 1.0, 1.0]], dtype=torch.float64)  # |d - b| / 2 = 9.21: k = 1e-4
    sd = SafeDenoiser(bank, None, paper_config(scale=0.5, bandwidth=1.0, gate_margin=math.inf,
                                                      project_bank=False))
    got = sd.correct(d, 1.0, d)
    k = math.exp(-18.42 / 2)
    assert k / (k + PAPER_EPS) == pytest.approx(0.9999, abs=1e-4)
    d2 = torch.tensor([[1.0 + 36.84, 1.0, 1.0, 1.0]], dtype=torch.float64)  # k ~ 1e-8: shrink ~ 1/2
    got2 = sd.correct(d2, 1.0, d2)
    for point, out in ((d, got), (d2, got2)):
        kk = math.exp(-float((point - bank).norm()) / 2)
        torch.testing.assert_close(out, point - 0.5 * kk / (kk + PAPER_EPS) * bank, rtol=0, atol=1e-12)
    assert float(sd.last_diagnostics.beta[0]) == pytest.approx(0.5 * kk / (kk + PAPER_EPS), rel=1e-9)  # d2's


def test_paper_beta_is_the_scale_it_really_applied():
    """beta reports s * sum k / (sum k + 1e-8): ~s near the bank, ~0 where the kernel has fallen below the
    guard, and the gate-open row still counts as acted (the official loop re-noises it; infotext's max beta
    tells the two apart)."""
    bank = torch.zeros(1, 4, dtype=torch.float64)
    sd = SafeDenoiser(bank, None, paper_config(scale=0.5, bandwidth=1.0, gate_margin=math.inf, project_bank=False))
    near = torch.tensor([[0.1, 0.0, 0.0, 0.0], [200.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = sd.correct(near, 1.0, near)
    diag = sd.last_diagnostics
    assert diag.acted.tolist() == [True, True]
    assert float(diag.beta[0]) == pytest.approx(0.5, abs=1e-6) and float(diag.beta[1]) < 1e-30
    torch.testing.assert_close(out[1], near[1], rtol=0, atol=1e-30)


def test_an_infinite_margin_never_calibrates_and_a_calibration_is_kept():
    bank = _points(15, 6)
    sd = SafeDenoiser(bank, None, paper_config(gate_margin=math.inf))
    sd.correct(bank, 1.0, bank)
    assert sd.gate_threshold is None and sd.last_diagnostics.acted.all()
    gated = SafeDenoiser(bank, None, paper_config(gate_margin=0.1))
    threshold = gated.calibrate_gate(sigma=2.0)
    gated.correct(bank, 1.0, bank)
    assert gated.gate_threshold == threshold, "correct() does not recalibrate a calibrated gate"


def test_the_gate_opens_only_above_its_bar():
    """One bank point at the origin, h^2 = 1/2 (logit = -distance): a prediction at distance 0.5 has a
    log kernel sum of exactly -0.5; with the bar at exp(-0.5) it does not exceed it."""
    bank = torch.zeros(1, 4)
    cfg = paper_config(bandwidth=math.sqrt(0.5), gate_margin=1 - math.exp(-0.5))
    sd = SafeDenoiser(bank, None, cfg)
    on_bar, above = torch.tensor([[0.5, 0.0, 0.0, 0.0]]), torch.tensor([[0.25, 0.0, 0.0, 0.0]])
    sd.correct(on_bar, 1.0, on_bar)
    assert sd.gate_threshold == 1.0
    bar = math.log(1.0 - cfg.gate_margin)
    assert float(sd.last_diagnostics.log_kernel_sum[0]) == -0.5 == float(torch.tensor(bar)), "on the bar in float32"
    assert sd.last_diagnostics.acted.tolist() == [False]
    sd.correct(above, 1.0, above)
    assert sd.last_diagnostics.acted.tolist() == [True]


def test_gate_bar_at_or_below_zero_is_no_gate_and_a_small_bar_still_gates():
    """One bank point: its calibrated kernel sum is exactly 1. A margin of 1 leaves a bar of 0 (no
    gate); a margin of 0.5 a bar of 0.5, which a far prediction (kernel sum ~ 0) does not reach."""
    bank = torch.zeros(1, 8)
    far = torch.full((2, 8), 10.0)
    for margin, acted in ((1.0, True), (1.5, True), (0.5, False)):
        sd = SafeDenoiser(bank, None, paper_config(bandwidth=1.0, gate_margin=margin))
        sd.correct(far, 1.0, far)
        assert sd.gate_threshold == 1.0
        assert sd.last_diagnostics.acted.tolist() == [acted, acted], margin


# ------------------------------------------------------------------------------------ calibration
def _kernel_sums(queries: torch.Tensor, bank: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(queries, bank) / (2 * bandwidth**2)).sum(1)


def test_calibration_defaults_to_the_clean_banks_smallest_kernel_sum():
    bank = torch.cat([torch.zeros(3, 4, dtype=torch.float64), torch.full((1, 4), 2.0, dtype=torch.float64)])
    sd = SafeDenoiser(bank, None, paper_config(bandwidth=1.0, project_bank=False))
    sums = _kernel_sums(bank, bank, 1.0)
    assert sd.calibrate_gate() == pytest.approx(float(sums.min()), rel=1e-12)
    assert sd.calibrate_gate(quantile=1.0) == pytest.approx(float(sums.max()), rel=1e-12)
    with pytest.raises(ValueError, match=r"quantile must lie in \[0, 1\], got 1.5"):
        sd.calibrate_gate(quantile=1.5)


@pytest.mark.parametrize("max_rows", [30, 12])
def test_calibration_is_the_documented_procedure(max_rows):
    """Queries: the whole bank, or max_rows of it drawn by randperm from a generator seeded 42; each
    noised by sigma * randn from that generator, CALIBRATION_BATCH rows at a time; the quantile of
    their kernel sums against the whole bank."""
    bank = _points(16, 30, 3) * 2
    sigma, bandwidth = 0.7, 0.8
    gen = torch.Generator().manual_seed(42)
    queries = bank if max_rows >= 30 else bank[torch.randperm(30, generator=gen)[:max_rows]]
    noised = torch.cat([part + sigma * torch.randn(part.shape, generator=gen, dtype=part.dtype)
                        for part in queries.split(CALIBRATION_BATCH)])
    want = float(torch.quantile(_kernel_sums(noised, bank, bandwidth), 0.25))
    sd = SafeDenoiser(bank, None, paper_config(bandwidth=bandwidth, project_bank=False))
    assert sd.calibrate_gate(sigma, quantile=0.25, max_rows=max_rows) == pytest.approx(want, rel=1e-12)
    again = SafeDenoiser(bank, None, paper_config(bandwidth=bandwidth, project_bank=False))
    assert again.calibrate_gate(sigma, seed=42, quantile=0.25, max_rows=max_rows) == sd.gate_threshold


def test_a_bank_of_exactly_max_rows_is_calibrated_on_all_of_it():
    bank = _points(17, 20, 3)
    a = SafeDenoiser(bank, None, paper_config()).calibrate_gate(0.5, max_rows=20)
    b = SafeDenoiser(bank, None, paper_config()).calibrate_gate(0.5, max_rows=21)
    assert a == b


def test_calibration_covers_every_batch_of_a_large_bank():
    """Over CALIBRATION_BATCH rows: the outlier with the smallest kernel sum sits in the second batch."""
    bank = torch.zeros(CALIBRATION_BATCH + 6, 3, dtype=torch.float64)
    bank[CALIBRATION_BATCH + 3] = 50.0
    sd = SafeDenoiser(bank, None, paper_config(bandwidth=1.0, project_bank=False))
    assert sd.calibrate_gate() == pytest.approx(1.0, rel=1e-12)  # the outlier's sum: itself only


# ------------------------------------------------------------------------------------ kernel
def test_kernel_defaults_no_nearest_and_no_mean_unless_asked():
    bank, x = _points(18, 6), _points(19, 2)
    stats = kernel_stats(x, bank, (bank * bank).sum(1), gaussian_logits(torch.ones(2, dtype=torch.float64)),
                         chunk_size=4, want_mean=False)
    assert stats.mean is None
    assert stats.nearest_index.shape == (2, 0) and stats.nearest_sq_dist.shape == (2, 0)


def test_kernel_nearest_count_is_capped_by_the_bank_size_not_the_dimension():
    bank, x = _points(20, 10, 2), _points(21, 3, 2)
    stats = kernel_stats(x, bank, (bank * bank).sum(1), laplace_logits(1.0), chunk_size=3, want_mean=True,
                         k_nearest=4)
    assert stats.nearest_index.shape == (3, 4)
    assert torch.equal(stats.nearest_index, torch.cdist(x, bank).topk(4, largest=False).indices)
    small = kernel_stats(x, bank[:2], (bank[:2] ** 2).sum(1), laplace_logits(1.0), chunk_size=3, want_mean=True,
                         k_nearest=4)
    assert small.nearest_index.shape == (3, 2)


def test_kernel_counts_a_chunk_just_above_the_negligible_weight():
    """Chunks of 2: the first at the query (log weight 0), the second at log weight -41.9, above the
    documented cut of 2^-60 / chunk = -42.28: its (tiny) share of the mean is kept."""
    chunk = 2
    cut = NEGLIGIBLE_LOG_WEIGHT - math.log(chunk)
    assert -41.9 > cut > -41.9 - 1
    x = torch.zeros(1, 1, dtype=torch.float64)
    far = math.sqrt(2 * 41.9)  # sigma 1: log weight -d^2 / 2 = -41.9
    bank = torch.tensor([[0.0], [0.0], [far], [far]], dtype=torch.float64)
    stats = kernel_stats(x, bank, (bank * bank).sum(1), gaussian_logits(torch.ones(1, dtype=torch.float64)),
                         chunk_size=chunk, want_mean=True)
    w = math.exp(-41.9)
    assert float(stats.mean) == pytest.approx(2 * w * far / (2 + 2 * w), rel=1e-9, abs=0)


# ------------------------------------------------------------------------------------ schedules
def test_alpha_bar_is_clamped_to_the_schedule_and_interpolated_in_float64():
    ac32 = ALPHAS.float()
    got = alpha_bar_at(torch.tensor([-5.0, 0.0, 400.3, 998.5, 999.0, 1500.0], dtype=torch.float64), ac32)
    a = ac32.double()
    want = torch.stack([a[0], a[0], 0.7 * a[400] + 0.3 * a[401], 0.5 * a[998] + 0.5 * a[999], a[999], a[999]])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert float(alpha_bar_at(400.3, ac32)) == pytest.approx(float(want[2]), rel=1e-12)
    assert timestep_to_sigma(400.3, ac32).dtype == torch.float64


def test_sigma_to_timestep_is_clamped_and_exact_in_the_first_interval():
    assert sigma_to_timestep(torch.tensor([1e-4, 1e3]), ALPHAS).tolist() == [0.0, 999.0]
    log_sig = (((1 - ALPHAS) / ALPHAS).sqrt()).log()
    half = torch.exp((log_sig[0] + log_sig[1]) / 2)  # halfway between t = 0 and 1 in log sigma
    assert float(sigma_to_timestep(half, ALPHAS)) == pytest.approx(0.5, abs=1e-12)
    assert float(sigma_to_timestep(timestep_to_sigma(500.0, ALPHAS), ALPHAS)) == pytest.approx(500.0, abs=1e-9)


def test_eps_x0_conversions_keep_precision_and_the_latents_dtype():
    x64, eps64 = _points(22, 2), _points(23, 2)
    a = 0.123456789012345
    torch.testing.assert_close(eps_to_x0(x64, eps64, a), (x64 - math.sqrt(1 - a) * eps64) / math.sqrt(a),
                               rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(x0_to_eps(x64, eps64, a), (x64 - math.sqrt(a) * eps64) / math.sqrt(1 - a),
                               rtol=1e-14, atol=1e-14)
    x32 = x64.float()
    assert eps_to_x0(x32, x32, ALPHAS[[10, 20]]).dtype == torch.float32


def test_step_window_bounds_are_checked():
    with pytest.raises(ValueError, match=r"0 <= start <= end <= 1, got \[0.2, 1.5\]"):
        sigma_window_for_steps(torch.tensor([2.0, 1.0, 0.0]), 0.2, 1.5)


def test_karras_schedule_by_hand():
    sig = karras_sigmas(3, 0.1, 10.0)
    middle = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    torch.testing.assert_close(sig, torch.tensor([10.0, middle, 0.1, 0.0], dtype=torch.float64), rtol=1e-12, atol=0)
    rho3 = karras_sigmas(3, 0.1, 10.0, rho=3.0)
    assert float(rho3[1]) == pytest.approx(((10.0 ** (1 / 3) + 0.1 ** (1 / 3)) / 2) ** 3)
    torch.testing.assert_close(karras_sigmas(1, 0.1, 10.0), torch.tensor([10.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        karras_sigmas(0, 0.1, 10.0)
