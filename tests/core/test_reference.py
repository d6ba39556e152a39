"""A safe reference from model samples, cleaned by the bank (core/reference.py)."""

from __future__ import annotations

import pytest
import torch

from lib_safe_denoiser.core.reference import NEIGHBOURS, bank_likeness, clean_reference


def _samples(seed: int):
    """A model's samples: 80 of two safe clusters and 20 of the concept, the bank 6 other draws of it."""
    gen = torch.Generator().manual_seed(seed)
    safe = torch.cat([torch.randn(40, 2, 2, generator=gen) - 3, torch.randn(40, 2, 2, generator=gen) + 3])
    concept = torch.randn(20, 2, 2, generator=gen) * 0.7 + torch.tensor([[3.0, -3.0], [3.0, -3.0]])
    bank = torch.randn(6, 2, 2, generator=gen) * 0.7 + torch.tensor([[3.0, -3.0], [3.0, -3.0]])
    return torch.cat([safe, concept]), bank


def test_likeness_is_nearest_bank_distance_over_kth_fellow_distance():
    samples, bank = _samples(0)
    flat, flat_bank = samples.flatten(1).double(), bank.flatten(1).double()
    to_bank = torch.cdist(flat, flat_bank).min(dim=1).values
    to_fellows = torch.cdist(flat, flat).sort(dim=1).values[:, NEIGHBOURS]  # column 0 is the sample itself
    torch.testing.assert_close(bank_likeness(samples, bank, chunk_size=7), to_bank / to_fellows,
                               rtol=1e-9, atol=1e-9)


def test_cleaning_drops_the_concept_and_keeps_the_rest():
    samples, bank = _samples(1)
    kept, keep = clean_reference(samples, bank, 0.2)
    assert keep.dtype == torch.bool and keep.shape == (100,)
    assert int(keep.sum()) == 80 and torch.equal(kept, samples[keep])
    assert int(keep[80:].sum()) <= 2  # at most 2 of the 20 concept samples stay
    likeness = bank_likeness(samples, bank)
    assert likeness[~keep].max() <= likeness[keep].min()  # exactly the most bank-like went


def test_share_zero_keeps_everything():
    samples, bank = _samples(2)
    kept, keep = clean_reference(samples, bank, 0.0)
    assert bool(keep.all()) and torch.equal(kept, samples)


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_share_out_of_range_is_refused(share: float):
    samples, bank = _samples(3)
    with pytest.raises(ValueError, match="share must lie in"):
        clean_reference(samples, bank, share)


def test_mismatched_shapes_and_too_few_samples_are_named():
    samples, bank = _samples(4)
    with pytest.raises(ValueError, match=r"samples have shape \(2, 2\).*\(4,\)"):
        bank_likeness(samples, bank.reshape(6, 4))
    with pytest.raises(ValueError, match=f"more than {NEIGHBOURS} samples, got {NEIGHBOURS}"):
        bank_likeness(samples[:NEIGHBOURS], bank)
