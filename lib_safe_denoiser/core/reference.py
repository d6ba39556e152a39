"""A safe reference set for the odds mode from the model's own samples, cleaned by the negation bank.

The odds mode weighs the bank against a reference set of safe images. A WebUI user has no such set,
but the model can make one: samples of generic prompts. Those hold the concept too, about as often
as the model draws it (the prior z), and a reference that holds the concept pulls the safe mean back
onto it. So the samples the bank explains best are dropped: each sample's distance to its nearest
bank image, over the distance to its k-th nearest fellow sample (its neighbourhood's scale), ranks
how much more it resembles the bank than the model's output around it; the lowest ``share`` go.
No classifier and no labels: the bank is the only description of the concept there is.
"""

from __future__ import annotations

import torch

from lib_safe_denoiser.core.kernel import kernel_stats

NEIGHBOURS = 5
"""k of the k-th nearest fellow sample that sets a sample's neighbourhood scale."""
SHARE_PER_PRIOR = 3.0
"""The share to drop, in units of the prior z (the model's own rate of the concept): on the digits,
z leaves 10-40% of the concept's samples in, 2z 0-12%, 3z 0-2.5% (benchmarks/bench_digits.py)."""
MAX_SHARE = 0.9
"""The most a reference loses, whatever the prior: a tenth of the samples is still a reference."""


def share_for(prior: float) -> float:
    """The share of model samples dropped from a reference for the odds mode's ``prior``."""
    return min(SHARE_PER_PRIOR * prior, MAX_SHARE)


def _nearest(rows: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Squared distances [B, k] from each row to its k nearest bank rows (streamed, any bank size)."""
    stats = kernel_stats(rows, bank, (bank * bank).sum(dim=1), lambda sq: -sq, chunk_size=chunk_size,
                         want_mean=False, k_nearest=k)
    return stats.nearest_sq_dist


def bank_likeness(samples: torch.Tensor, negation: torch.Tensor, *, chunk_size: int = 256) -> torch.Tensor:
    """Per sample: distance to the nearest bank latent / distance to its k-th nearest other sample.

    Small where a sample sits closer to the bank than the model's own samples sit to each other
    around it. ``samples`` [M, ...] and ``negation`` [N, ...] of one latent shape; returns [M] float64.
    """
    if samples.shape[1:] != negation.shape[1:]:
        raise ValueError(f"samples have shape {tuple(samples.shape[1:])}, but the negation bank's latents "
                         f"have {tuple(negation.shape[1:])}")
    if samples.shape[0] <= NEIGHBOURS:
        raise ValueError(f"a reference needs more than {NEIGHBOURS} samples, got {samples.shape[0]}")
    flat = samples.detach().reshape(samples.shape[0], -1).double()
    bank = negation.detach().reshape(negation.shape[0], -1).double().to(flat.device)
    to_bank = _nearest(flat, bank, 1, chunk_size)[:, 0]
    # the nearest "fellow sample" of each is itself (distance 0): ask for one more
    to_samples = _nearest(flat, flat, NEIGHBOURS + 1, chunk_size)[:, NEIGHBOURS]
    return (to_bank / to_samples.clamp_min(torch.finfo(flat.dtype).tiny)).sqrt().cpu()


def clean_reference(samples: torch.Tensor, negation: torch.Tensor, share: float,
                    *, chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(the samples to keep, the boolean mask [M] of them): drops the ``share`` of ``samples`` that
    resemble the bank most (``bank_likeness``), 0 <= share < 1."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must lie in [0, 1), got {share}")
    score = bank_likeness(samples, negation, chunk_size=chunk_size)
    drop = round(share * samples.shape[0])
    keep = torch.ones(samples.shape[0], dtype=torch.bool)
    if drop:
        keep[score.argsort()[:drop]] = False
    return samples[keep.to(samples.device)], keep
