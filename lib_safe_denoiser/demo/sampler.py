"""Euler and Heun samplers on a Karras schedule with a hook on every x0 prediction.

The hook ``correct(x, sigma, x0) -> x0`` sees what a WebUI callback sees (the noisy batch, its
sigma and the model's denoised prediction) and may replace the prediction, so the safe
denoiser is exercised exactly as in the extension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from lib_safe_denoiser.core.schedules import karras_sigmas

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Correction = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]

SIGMA_MIN = 0.01
SIGMA_MAX = 10.0
"""About 13 x sigma_data (0.75) at the top: pure noise for 8x8 digits in [-1, 1]."""


def sample(
    model: Denoiser,
    noise: torch.Tensor,
    *,
    steps: int = 50,
    correct: Correction | None = None,
    heun: bool = False,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    batch_size: int = 4096,
    progress: bool = False,
    desc: str = "sampling",
) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``noise * sigma_max`` (``noise`` is unit Gaussian).

    Rows are processed in batches of ``batch_size``; the same noise gives the same samples
    with and without a correction up to where the correction acts.
    """
    sigmas = karras_sigmas(steps, sigma_min, sigma_max).tolist()
    batches = noise.split(batch_size)
    bar = tqdm(total=steps * len(batches), desc=desc, disable=not progress, leave=False, unit="step")
    out = []
    with torch.no_grad():
        for part in batches:
            out.append(_integrate(model, part * sigmas[0], sigmas, correct, heun, bar))
    bar.close()
    return torch.cat(out)


def _integrate(model: Denoiser, x: torch.Tensor, sigmas: list[float], correct: Correction | None,
               heun: bool, bar: tqdm) -> torch.Tensor:
    def denoise(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        x0 = model(x_t, sigma)
        return correct(x_t, sigma, x0) if correct is not None else x0

    for sigma, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
        slope = (x - denoise(x, sigma)) / sigma
        x_next = x + (nxt - sigma) * slope
        if heun and nxt > 0:
            slope_next = (x_next - denoise(x_next, nxt)) / nxt
            x_next = x + (nxt - sigma) * (slope + slope_next) / 2
        x = x_next
        bar.update(1)
    return x
