"""Noise schedules and the conversions timestep samplers need.

The WebUI's timestep samplers (DDIM, PLMS, UniPC) work in the variance-preserving form
x = sqrt(a) x0 + sqrt(1-a) eps with an integer DDPM timestep and eps predictions; the safe
denoiser works in the k-diffusion form x = x0 + sigma eps. These helpers map between them.
"""

from __future__ import annotations

import math

import torch


def alpha_bar_at(t: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha_bar at (possibly fractional) timesteps, linearly interpolated, clamped to the schedule."""
    ac = alphas_cumprod.detach().to(torch.float64).cpu()
    t = torch.as_tensor(t, dtype=torch.float64).cpu().clamp(0, ac.numel() - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=ac.numel() - 1)
    frac = t - lo
    return ac[lo] * (1 - frac) + ac[hi] * frac


def timestep_to_sigma(t: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion sigma = sqrt((1 - a_t) / a_t) of DDPM timesteps (float64, CPU)."""
    a = alpha_bar_at(t, alphas_cumprod)
    return ((1 - a) / a).sqrt()


def sigma_to_timestep(sigma: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The inverse of ``timestep_to_sigma``, interpolated in log sigma (for presets given in timesteps)."""
    sig = ((1 - alphas_cumprod.double().cpu()) / alphas_cumprod.double().cpu()).sqrt().log()
    target = torch.as_tensor(sigma, dtype=torch.float64).log().clamp(sig[0], sig[-1])
    hi = torch.searchsorted(sig, target.reshape(-1)).clamp(1, sig.numel() - 1)
    lo = hi - 1
    frac = (target.reshape(-1) - sig[lo]) / (sig[hi] - sig[lo])
    return (lo + frac).reshape(target.shape)


def _broadcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=torch.float64)
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)


def eps_to_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """x0 = (x - sqrt(1-a) eps) / sqrt(a) for a VP latent x."""
    a = _broadcast(alpha_bar, x)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """eps = (x - sqrt(a) x0) / sqrt(1-a): the eps prediction that implies ``x0``."""
    a = _broadcast(alpha_bar, x)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def vp_to_k(x: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The k-diffusion latent x / sqrt(a) = x0 + sigma eps of a VP latent."""
    return x / _broadcast(alpha_bar, x).sqrt()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule of ``n`` sigmas from ``sigma_max`` down to ``sigma_min``, then 0."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def sigma_window_for_steps(sigmas: torch.Tensor, start: float, end: float) -> tuple[float, float]:
    """Map a window given as fractions of the schedule's steps to a sigma window.

    ``sigmas`` are the schedule's decreasing noise levels (a trailing 0 is ignored); step i of n
    is inside when start <= i / n < end, so (0, 12/50) is "the first 12 of 50 steps". The result
    (sigma_min, sigma_max) contains exactly those steps' sigmas; (inf, inf) if none.
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"the step window must satisfy 0 <= start <= end <= 1, got [{start}, {end}]")
    sig = [float(s) for s in torch.as_tensor(sigmas).flatten() if float(s) > 0]
    n = len(sig)
    inside = [s for i, s in enumerate(sig) if start <= i / n < end]
    if not inside:
        return float("inf"), float("inf")
    return min(inside), max(inside)


def fraction_window_to_sigmas(start: float, end: float, alphas_cumprod: torch.Tensor) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a window given as fractions of the timeline (0 = pure noise,
    1 = clean image): fraction f is DDPM timestep t = (1 - f)(T - 1), whatever the sampler or step count."""
    last = alphas_cumprod.numel() - 1
    hi = math.inf if start <= 0 else float(timestep_to_sigma((1 - start) * last, alphas_cumprod))
    lo = 0.0 if end >= 1 else float(timestep_to_sigma((1 - end) * last, alphas_cumprod))
    return lo, hi
