"""The paper mode projects its bank as the official code does (each channel vector a unit vector);
the other modes and ``project_bank=False`` use the bank as it is."""

from __future__ import annotations

import math

import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.core.denoiser import project_channels

BANK = torch.tensor([[[[3.0]], [[4.0]]]], dtype=torch.float64)
"""One latent, 2 channels at one position: (3, 4), projected (0.6, 0.8)."""


def test_each_position_of_each_latent_becomes_a_unit_channel_vector():
    latents = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projected = project_channels(latents)
    torch.testing.assert_close(projected.norm(dim=1), torch.ones(3, 5, 6, dtype=torch.float64))
    torch.testing.assert_close(projected * latents.norm(dim=1, keepdim=True), latents)
    assert torch.equal(project_channels(torch.zeros(1, 2, 1, 1)), torch.zeros(1, 2, 1, 1)), "zero stays zero"
    flat = project_channels(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(flat, torch.tensor([[0.6, 0.8]]))


def corrected(config: SafeDenoiserConfig) -> torch.Tensor:
    d = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    return SafeDenoiser(BANK, None, config).correct(d, 1.0, d).flatten()


def test_the_paper_mode_pulls_away_from_the_projected_bank_unless_told_not_to():
    paper = SafeDenoiserConfig(mode="paper", scale=1.0, bandwidth=1e3, gate_margin=math.inf)
    torch.testing.assert_close(corrected(paper), -torch.tensor([0.6, 0.8], dtype=torch.float64))
    torch.testing.assert_close(corrected(paper.replace(project_bank=False)),
                               -torch.tensor([3.0, 4.0], dtype=torch.float64))


def test_the_constant_mode_uses_the_bank_as_it_is():
    constant = SafeDenoiserConfig(mode="constant", strength=1.0)
    torch.testing.assert_close(corrected(constant), -torch.tensor([3.0, 4.0], dtype=torch.float64))


def test_a_half_precision_bank_is_projected_in_float32():
    """Latents cached in float16 (or bfloat16) are projected after the cast to the float32 working set,
    so the paper mode corrects as with the float32 copy of the same numbers."""
    gen = torch.Generator().manual_seed(11)
    bank = torch.randn(5, 4, 3, 3, generator=gen).to(torch.bfloat16)
    x = torch.randn(2, 4, 3, 3, generator=gen)
    cfg = SafeDenoiserConfig(mode="paper", gate_margin=float("inf"), bandwidth=1.0)
    half = SafeDenoiser(bank, None, cfg)
    full = SafeDenoiser(bank.float(), None, cfg)
    assert half._negation.dtype == torch.float32
    torch.testing.assert_close(half.correct(x, 5.0, x), full.correct(x, 5.0, x), rtol=0, atol=0)
