"""Steering the WebUI's raw per-row model outputs in place (pure torch, no WebUI imports).

The WebUI's CFG denoiser lays out its model batch as [cond rows (one per AND-subprompt per
image)..., uncond rows (one per image)] and combines them as
``uncond[i] + sum_j w_j * scale * (cond_j - uncond[i])`` — an affine combination whose
coefficients sum to 1. Adding the same delta to every row of an image therefore adds exactly
that delta to the combined prediction; doing it in place in ``on_cfg_denoised`` also steers
the live preview and the Interrupt/Skip result, which the WebUI takes from the cond rows
before ``on_cfg_after_cfg`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lib_safe_denoiser.core.schedules import alpha_bar_at, eps_to_x0, timestep_to_sigma, vp_to_k

CondsList = Sequence[Sequence[tuple[int, float]]]
"""Per image, the (row index, weight) of each AND-subprompt, as the WebUI's prompt parser gives."""

Correct = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def combine_cfg(x_out: torch.Tensor, conds_list: CondsList, cond_scale: float) -> torch.Tensor:
    """The combined prediction per image, the same formula as CFGDenoiser.combine_denoised."""
    n = len(conds_list)
    uncond = x_out[-n:]
    out = uncond.clone()
    for i, conds in enumerate(conds_list):
        for row, weight in conds:
            out[i] += (x_out[row] - uncond[i]) * (weight * cond_scale)
    return out


def steer_rows_(
    x_out: torch.Tensor,
    x_in: torch.Tensor,
    sigma_in: torch.Tensor,
    conds_list: CondsList,
    cond_scale: float,
    correct: Correct,
    *,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Correct the combined prediction and add the change to every row of ``x_out`` in place.

    ``x_in`` and ``sigma_in`` are the model inputs in the same layout (their last rows, one per
    image, give each image's noisy latent and noise level). k-diffusion samplers: outputs are x0
    predictions and ``sigma_in`` noise levels. Timestep samplers (``alphas_cumprod`` given):
    outputs are eps predictions, ``sigma_in`` DDPM timesteps and ``x_in`` VP latents; the
    correction is computed on x0 in the k-diffusion parametrisation and mapped back to eps.
    Returns the per-image delta added (in the outputs' parametrisation), or None if nothing changed.
    """
    n = len(conds_list)
    combined = combine_cfg(x_out, conds_list, cond_scale)
    delta = correction_delta(combined, x_in[-n:], sigma_in[-n:], correct, alphas_cumprod=alphas_cumprod)
    if delta is None:
        return None
    delta = delta.to(x_out.dtype)
    for i, conds in enumerate(conds_list):
        for row, _ in conds:
            x_out[row] += delta[i]
        x_out[x_out.shape[0] - n + i] += delta[i]
    return delta


def correction_delta(
    combined: torch.Tensor,
    x_img: torch.Tensor,
    sigma: torch.Tensor,
    correct: Correct,
    *,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """What the correction changes in one combined prediction per image, or None if nothing.

    ``combined`` is in the sampler's parametrisation (x0, or eps with ``alphas_cumprod``), ``x_img``
    the noisy latents and ``sigma`` their noise levels (DDPM timesteps with ``alphas_cumprod``).
    The result is float32 and in the same parametrisation as ``combined``.
    """
    combined = combined.float()
    x_img = x_img.float()
    sig = sigma.detach().double().cpu()
    if alphas_cumprod is None:
        steered = correct(x_img, sig, combined)
        return None if steered is combined else steered - combined
    a = alpha_bar_at(sig, alphas_cumprod)
    x0 = eps_to_x0(x_img, combined, a)
    steered = correct(vp_to_k(x_img, a), timestep_to_sigma(sig, alphas_cumprod), x0)
    if steered is x0:
        return None
    # eps = (x - sqrt(a) x0) / sqrt(1 - a): a change of x0 by d changes eps by -sqrt(a / (1 - a)) d
    scale = (a / (1 - a)).sqrt().reshape(-1, *([1] * (x0.ndim - 1))).to(x0)
    return -scale * (steered - x0)
