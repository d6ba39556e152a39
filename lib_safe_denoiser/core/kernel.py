"""Streamed kernel statistics of a batch against a bank, in log space.

Every estimator of docs/method.md needs, for each row x of a batch and a bank {b_n},
logits l_n = f(||x - b_n||^2), their log-sum-exp, and often the softmax-weighted mean of the
bank. Distances come from one matmul (|x|^2 - 2 x.b + |b|^2: never the O(B*N*D) broadcast),
and the bank is visited in chunks with an online log-sum-exp, so the extra memory is
O(B*(chunk + D)) whatever N is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

NEGLIGIBLE_LOG_WEIGHT = -60 * math.log(2)
"""Weights below 2^-60 of the largest are left out of the weighted bank sum."""

LogitFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps squared distances [B, n] to logits [B, n]."""


@dataclass
class KernelStats:
    """Result of one streamed pass over a bank for a batch of B rows."""

    lse: torch.Tensor  # [B] log-sum-exp of the logits over the whole bank
    mean: torch.Tensor | None  # [B, D] softmax-weighted mean of the bank, if asked for
    nearest_index: torch.Tensor  # [B, k] indices of the k nearest bank rows
    nearest_sq_dist: torch.Tensor  # [B, k] their squared distances


def gaussian_logits(sigma: torch.Tensor) -> LogitFn:
    """l = -d^2 / (2 sigma^2), sigma one per row: the noised empirical density of the bank."""
    inv = 1.0 / (2.0 * sigma.reshape(-1, 1) ** 2)
    return lambda sq_dist: -sq_dist * inv


def laplace_logits(bandwidth: float) -> LogitFn:
    """l = -d / (2 h^2) on the unsquared distance: the official Stable Diffusion recipe's kernel."""
    inv = 1.0 / (2.0 * bandwidth**2)
    return lambda sq_dist: -sq_dist.sqrt() * inv


def kernel_stats(
    x: torch.Tensor,
    bank: torch.Tensor,
    bank_sq_norm: torch.Tensor,
    logits: LogitFn,
    *,
    chunk_size: int,
    want_mean: bool,
    k_nearest: int = 0,
) -> KernelStats:
    """One pass over ``bank`` ([N, D]) for the rows of ``x`` ([B, D]), both in the same float dtype.

    Uses an online log-sum-exp: a running max m, the running sum s = sum exp(l - m) and the
    running weighted bank sum, rescaled by exp(m_old - m_new) when the max grows. Nothing is
    ever exponentiated without subtracting the running max first, so no row underflows to a
    zero weight vector, however far it is from the bank. A chunk whose weights all sit below
    2^-60 of the running max adds nothing a float64 sum could hold, so its weighted sum is
    skipped: in high dimension (D = 16384) the Gaussian softmax is so peaked that most chunks
    are, and the bank is read about once instead of twice.
    """
    batch = x.shape[0]
    x_sq = (x * x).sum(dim=1, keepdim=True)
    run_max = torch.full((batch,), -torch.inf, dtype=x.dtype, device=x.device)
    run_sum = torch.zeros(batch, dtype=x.dtype, device=x.device)
    acc = torch.zeros_like(x) if want_mean else None
    skip_below = NEGLIGIBLE_LOG_WEIGHT - math.log(chunk_size)
    k = min(k_nearest, bank.shape[0])
    best_d = torch.empty(batch, 0, dtype=x.dtype, device=x.device)
    best_i = torch.empty(batch, 0, dtype=torch.long, device=x.device)

    for start in range(0, bank.shape[0], chunk_size):
        chunk = bank[start:start + chunk_size]
        sq = torch.addmm(x_sq + bank_sq_norm[start:start + chunk_size].unsqueeze(0), x, chunk.T,
                         beta=1.0, alpha=-2.0).clamp_min_(0.0)
        logit = logits(sq)
        chunk_max = logit.max(dim=1).values
        new_max = torch.maximum(run_max, chunk_max)
        rescale = torch.exp(run_max - new_max)  # exp(-inf) = 0 on the first chunk
        weights = torch.exp(logit - new_max.unsqueeze(1))
        run_sum = run_sum * rescale + weights.sum(dim=1)
        if acc is not None:
            acc.mul_(rescale.unsqueeze(1))
            if bool((chunk_max - new_max > skip_below).any()):
                acc.addmm_(weights, chunk)
        run_max = new_max
        if k:
            cand_d = torch.cat([best_d, sq], dim=1)
            cand_i = torch.cat([best_i, torch.arange(start, start + chunk.shape[0], device=x.device)
                                .expand(batch, -1)], dim=1)
            best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False)
            best_i = cand_i.gather(1, pos)

    mean = acc / run_sum.unsqueeze(1) if acc is not None else None
    return KernelStats(lse=run_max + run_sum.log(), mean=mean, nearest_index=best_i, nearest_sq_dist=best_d)
