"""The paper recipes mean the same at every latent size: the kernel's bandwidth follows the latent's size
from the one the recipes were tuned at (SD 1.x at 512x512)."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.core.config import PAPER_REFERENCE_DIM
from lib_safe_denoiser.core.denoiser import project_channels


def upsample(latents: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x: every distance doubles, the dimension grows fourfold."""
    return latents.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)


def test_the_recipes_bandwidth_is_kept_at_sd1_size_and_scaled_elsewhere():
    assert PAPER_REFERENCE_DIM == 4 * 64 * 64
    config = SafeDenoiserConfig(mode="paper", bandwidth=3.15)
    assert SafeDenoiser(torch.zeros(1, 4, 64, 64), None, config).paper_bandwidth == 3.15
    assert SafeDenoiser(torch.zeros(1, 4, 128, 128), None, config).paper_bandwidth == pytest.approx(3.15 * math.sqrt(2))
    assert SafeDenoiser(torch.zeros(1, 4, 32, 32), None, config).paper_bandwidth == pytest.approx(3.15 / math.sqrt(2))
    unscaled = config.replace(reference_dim=0)
    assert SafeDenoiser(torch.zeros(1, 4, 128, 128), None, unscaled).paper_bandwidth == 3.15


@pytest.mark.parametrize("hw", [(8, 8), (12, 16)])
def test_a_two_times_larger_latent_gets_exactly_the_larger_correction(hw):
    """The same bank and prediction at two resolutions: the same kernel weights, gate and correction."""
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(7, 4, *hw, generator=gen, dtype=torch.float64)
    near = project_channels(bank[:1])  # the paper mode's bank is projected
    x0 = torch.cat([near + 0.1 * torch.randn(1, 4, *hw, generator=gen, dtype=torch.float64),
                    3.0 * torch.randn(1, 4, *hw, generator=gen, dtype=torch.float64)])
    config = SafeDenoiserConfig(mode="paper", bandwidth=3.15, gate_margin=1.6, reference_dim=4 * hw[0] * hw[1])
    small, large = SafeDenoiser(bank, None, config), SafeDenoiser(upsample(bank), None, config)
    out_small, out_large = small.correct(x0, 10.0, x0), large.correct(upsample(x0), 10.0, upsample(x0))
    assert small.gate_threshold == pytest.approx(large.gate_threshold, rel=1e-6)  # |a|^2 - 2ab + |b|^2 rounding
    assert small.last_diagnostics.acted.tolist() == large.last_diagnostics.acted.tolist() == [True, False]
    torch.testing.assert_close(out_large, upsample(out_small))
    fixed = SafeDenoiser(upsample(bank), None, config.replace(reference_dim=0))
    out_fixed = fixed.correct(upsample(x0), 10.0, upsample(x0))
    assert fixed.last_diagnostics.log_kernel_sum[0] < large.last_diagnostics.log_kernel_sum[0], \
        "without the scaling the larger latent's weights are smaller"
    assert not torch.allclose(out_fixed, out_large, atol=1e-6)


def test_reference_dim_is_validated():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="reference_dim must be an integer >= 0"):
            SafeDenoiserConfig(reference_dim=bad)
