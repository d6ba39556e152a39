"""Carrying the paper mode's correction into the sampler's state, as the official loop does.

The official loop corrects x0^ and then *replaces* the sampler state with the corrected x0^
re-noised with fresh noise, ``x <- x0^' + sigma * n``, before stepping with the old noise
prediction eps. Relative to an uncorrected step that moves the next state by

    (x0^' - x0^) + sigma * (n - eps)                                  (the whole correction, re-noised)

A WebUI extension can only change the model's prediction, and a sampler step moves its next state
by ``(1 - sigma_next / sigma)`` of a change of the prediction (``sigma_down`` for ancestral
samplers, which step deterministically only that far and add noise for the rest). Scaling the
change by ``sigma / (sigma - sigma_next)`` therefore carries the official displacement into the
next state. sigma_next is not handed to the extension: it is estimated from the ratio of the last
two steps' noise levels (schedules change that ratio slowly), and for a pass's first step from a
log-uniform descent to ``SIGMA_FLOOR`` over the steps left. benchmarks/bench_parity.py measures it
against the official loop on every sampler family.
"""

from __future__ import annotations

import math

import torch

SIGMA_FLOOR = 0.03
"""About the smallest noise level of Stable Diffusion's schedule (0.029): where a pass's first step
estimates the descent of its schedule towards."""


def ancestral_down(sigma: float, sigma_next: float, eta: float) -> float:
    """k-diffusion's get_ancestral_step: the noise level an ancestral step descends to deterministically."""
    if sigma_next <= 0 or eta <= 0:
        return sigma_next
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2)


CARRY_KINDS: tuple[str, ...] = ("step", "heun", "midpoint", "multistep", "plms")
"""Samplers whose step the carry is exact for (to first order). ``step``: one model call per step
(Euler, Euler a, DDIM, at any eta). ``heun``: Heun's two calls; the first call's carry moves the
midpoint state by the whole displacement and the next state by half, the second call adds the rest.
``midpoint``: DPM++ SDE, which steps to its midpoint sqrt(sigma * sigma_next) with the first call and
with the second call's prediction alone from there: the first call's factor is the midpoint's, the
second call adds what moves the next state by the displacement. ``multistep``: DPM++ 2M, whose step
extrapolates (1 + q) D_i - q D_(i-1) (q = 1/2 on an even log-sigma grid, 0 on its first step): the
official loop's state replacement also shifts the prediction it keeps, so each call's change makes
up for what the previous change left in the extrapolation (a tail shrinking by q / (1 + q) per step).
``plms``: the WebUI's PLMS, a Heun-like first step (two calls) then Adams-Bashforth extrapolations
of eps over up to four steps (``PLMS_COEFFICIENTS``); the replacement keeps eps, so each step's
eps change cancels what the earlier ones leave in the extrapolation. UniPC and LMS are not carried
(their correction changes the prediction alone)."""

PLMS_COEFFICIENTS: tuple[tuple[float, ...], ...] = (
    (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
"""The WebUI's PLMS eps extrapolation at its second, third and later steps, newest eps first."""


class Carry:
    """The carry of one sampling pass (see the module docstring).

    ``kind`` is one of ``CARRY_KINDS``; ``eta`` the sampler's ancestral noise (0: deterministic);
    ``generator`` draws the re-noising noise, so a seeded pass is reproducible.
    """

    def __init__(self, kind: str, eta: float = 0.0, generator: torch.Generator | None = None) -> None:
        if kind not in CARRY_KINDS:
            raise ValueError(f"kind must be one of {CARRY_KINDS}, got {kind!r}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.kind = kind
        self.eta = eta
        self.generator = generator
        self._previous: float | None = None
        self._next: float | None = None
        self._pending: torch.Tensor | None = None
        self._excess: torch.Tensor | None = None
        self._eps_changes: list[torch.Tensor] = []
        self._steps = 0

    def factor(self, sigma: float, steps_left: int) -> float:
        """sigma / (sigma - sigma_down(next)) for the first model call of a step at noise level ``sigma``,
        ``steps_left`` the steps from this one to the end of the pass (this one included)."""
        previous, self._previous, self._next = self._previous, sigma, None
        self._steps += 1
        if previous is not None and previous > sigma:
            self._next = sigma * sigma / previous
        elif sigma > SIGMA_FLOOR and steps_left > 1:
            self._next = sigma * (SIGMA_FLOOR / sigma) ** (1.0 / (steps_left - 1))
        else:
            return 1.0
        return sigma / (sigma - ancestral_down(sigma, self._next, self.eta))

    def first(self, x_t: torch.Tensor, sigma: float, denoised: torch.Tensor, corrected: torch.Tensor,
              acted: torch.Tensor, steps_left: int) -> torch.Tensor:
        """The prediction of a step's first call that moves the next state as the official replacement:
        the correction plus, on the rows where it acted, the swap of the model's noise for fresh noise,
        both times ``factor``. Tensors are [B, D] in the k-diffusion form, ``acted`` [B] bool. Called
        for every first call (also outside the window: it follows the schedule)."""
        factor = self.factor(sigma, steps_left)
        self._pending = None
        if self.kind == "multistep":
            return self._multistep(x_t, sigma, denoised, corrected, acted)
        if self.kind == "plms" and self._steps > 1:
            return self._plms(x_t, sigma, denoised, corrected, acted)
        if corrected is denoised:
            return denoised
        change = self._displacement(x_t, sigma, denoised, corrected, acted)
        if self.kind == "step":
            return denoised + factor * change
        # two calls: what the second call adds moves the next state by the part the first did not
        self._pending = (factor - 1.0) * change
        if self.kind == "plms":  # its first step keeps the first call's eps for the extrapolations
            self._eps_changes = [-factor * change / sigma]
        if self.kind == "midpoint" and self._next is not None:
            mid = math.sqrt(sigma * self._next)
            factor = sigma / (sigma - ancestral_down(sigma, mid, self.eta))
        return denoised + factor * change

    def _multistep(self, x_t: torch.Tensor, sigma: float, denoised: torch.Tensor, corrected: torch.Tensor,
                   acted: torch.Tensor) -> torch.Tensor:
        """DPM++ 2M: change = a * displacement + q / (1 + q) * (last change - last displacement), with
        a = 1 + r / ((1 - r)(1 + q)), r = sigma_next / sigma, so that the extrapolated step lands where
        the official replacement (which shifts the kept prediction by the displacement) would."""
        excess, self._excess = self._excess, None
        if corrected is denoised and excess is None:
            return denoised
        q = 0.5 if self._steps > 1 else 0.0
        change = torch.zeros_like(denoised) if excess is None else q / (1 + q) * excess
        displacement = torch.zeros_like(denoised)
        if corrected is not denoised:
            displacement = self._displacement(x_t, sigma, denoised, corrected, acted)
            ratio = self._next / sigma if self._next is not None else 0.0
            change = change + (1.0 + ratio / ((1.0 - ratio) * (1.0 + q))) * displacement
        self._excess = change - displacement
        return denoised + change

    def _plms(self, x_t: torch.Tensor, sigma: float, denoised: torch.Tensor, corrected: torch.Tensor,
              acted: torch.Tensor) -> torch.Tensor:
        """PLMS after its first step: the eps change e_i with c_0 e_i + sum_k c_k e_(i-k) = displacement
        / (sigma_next - sigma), so that x + (sigma_next - sigma) * extrapolated eps moves by the
        displacement while the earlier changes' share of the extrapolation is cancelled."""
        history = self._eps_changes
        if corrected is denoised and not history:
            return denoised
        coefficients = PLMS_COEFFICIENTS[min(self._steps - 2, len(PLMS_COEFFICIENTS) - 1)]
        target = torch.zeros_like(denoised)
        if corrected is not denoised and self._next is not None:
            target = self._displacement(x_t, sigma, denoised, corrected, acted) / (self._next - sigma)
        for c, earlier in zip(coefficients[1:], history, strict=False):
            target = target - c * earlier
        eps_change = target / coefficients[0]
        self._eps_changes = [eps_change, *history][: len(PLMS_COEFFICIENTS[-1]) - 1]
        return denoised - sigma * eps_change

    def _displacement(self, x_t: torch.Tensor, sigma: float, denoised: torch.Tensor, corrected: torch.Tensor,
                      acted: torch.Tensor) -> torch.Tensor:
        """How far the official loop moves the next state: the correction, plus on the rows where it
        acted the swap of the model's noise for fresh noise."""
        change = corrected - denoised
        noise = torch.randn(x_t.shape, generator=self.generator, dtype=x_t.dtype).to(x_t.device)
        return change + acted.to(x_t.dtype).unsqueeze(1) * (sigma * noise - (x_t - denoised))

    def second(self, denoised: torch.Tensor) -> torch.Tensor:
        """The prediction of a step's second call (Heun, DPM++ SDE): the rest of the first call's carry. The
        official loop corrects once per step, so this call's own correction is not applied."""
        pending, self._pending = self._pending, None
        return denoised if pending is None else denoised + pending.to(denoised)
