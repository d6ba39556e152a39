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


CARRY_KINDS: tuple[str, ...] = ("step", "heun", "midpoint", "multistep", "plms", "unipc")
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
eps change cancels what the earlier ones leave in the extrapolation. ``unipc``: the WebUI's UniPC
(``unipc_coefficients``), whose model call sits at a step's predicted state and whose prediction then
both corrects that step's state and enters the next steps' extrapolations: each call's change is the
one that puts the *next* predicted state (where the model looks next; after the last step, the result)
where the official replacement of the kept states would, counting what earlier changes left in the
state and the extrapolations. LMS is not carried (its correction changes the prediction alone)."""

PLMS_COEFFICIENTS: tuple[tuple[float, ...], ...] = (
    (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
"""The WebUI's PLMS eps extrapolation at its second, third and later steps, newest eps first."""


UNIPC_VARIANTS: tuple[str, ...] = ("bh1", "bh2")
"""The WebUI's UniPC variants the carry models (``unipc_coefficients``); its ``vary_coeff`` is not carried."""
UNIPC_DEFAULTS: tuple[int, str, bool] = (3, "bh1", True)
"""UniPC's (order, variant, lower order final) under the WebUI's default settings."""


def carries_unipc(settings: tuple[int, str, bool]) -> bool:
    """Whether UniPC run with these (order, variant, lower order final) settings can be carried."""
    return settings[0] >= 1 and settings[1] in UNIPC_VARIANTS


def unipc_coefficients(lambdas: list[float], lambda_t: float, order: int, variant: str = "bh1",
                       corrector: bool = True) -> tuple[float, list[float], float]:
    """One step of the WebUI's UniPC (multistep, data prediction; ``variant`` bh1 or bh2) as the linear map
    it is, in the k-diffusion form: the state it reaches at ``lambda_t`` (lambda = -log sigma) is
    ``a * x + sum_j w_j * M_j + k * m_t``, with ``M`` the kept predictions at ``lambdas`` (newest first
    in ``w``), ``m_t`` the prediction made at the step's predicted state and ``k`` its weight in the
    corrected state (0 for the predicted state, ``corrector=False``). Returns (a, w, k)."""
    h = lambda_t - lambdas[-1]
    rks = [(lambdas[-(i + 1)] - lambdas[-1]) / h for i in range(1, order)] + [1.0]
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if corrector:
        rhos = [0.5] if order == 1 else torch.linalg.solve(r_mat, b_vec).tolist()
    else:
        rhos = ([0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]).tolist()) + [0.0] \
            if order > 1 else [0.0]
    # x_base = e^-h x - h_phi_1 M_0;  state = x_base - B(h) (sum_i rho_i (M_i - M_0) / r_i + rho_last (m_t - M_0))
    w = [-h_phi_1 + b_h * (sum(r / rk for r, rk in zip(rhos[:-1], rks[:-1], strict=True)) + rhos[-1])]
    w += [-b_h * r / rk for r, rk in zip(rhos[:-1], rks[:-1], strict=True)]
    return math.exp(-h), w, -b_h * rhos[-1]


class Carry:
    """The carry of one sampling pass (see the module docstring).

    ``kind`` is one of ``CARRY_KINDS``; ``eta`` the sampler's ancestral noise (0: deterministic);
    ``generator`` draws the re-noising noise, so a seeded pass is reproducible.
    """

    def __init__(self, kind: str, eta: float = 0.0, generator: torch.Generator | None = None,
                 unipc: tuple[int, str, bool] = UNIPC_DEFAULTS) -> None:
        if kind not in CARRY_KINDS:
            raise ValueError(f"kind must be one of {CARRY_KINDS}, got {kind!r}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not carries_unipc(unipc):
            raise ValueError(f"UniPC needs an order >= 1 and the variant bh1 or bh2, got {unipc}")
        self.kind = kind
        self.eta = eta
        self.generator = generator
        self.unipc = unipc
        """UniPC's (order, variant, lower order final), as the WebUI's settings run it."""
        self._previous: float | None = None
        self._next: float | None = None
        self._pending: torch.Tensor | None = None
        self._excess: torch.Tensor | None = None
        self._eps_changes: list[torch.Tensor] = []
        self._steps = 0
        self._total = 0
        self._lambdas: list[float] = []
        self._kept_offsets: list[torch.Tensor] = []
        self._predictions: list[torch.Tensor] = []
        self._state_offset: torch.Tensor | None = None

    def factor(self, sigma: float, steps_left: int) -> float:
        """sigma / (sigma - sigma_down(next)) for the first model call of a step at noise level ``sigma``,
        ``steps_left`` the steps from this one to the end of the pass (this one included)."""
        self._steps += 1
        self._next = self._next_sigma(sigma, steps_left)
        if self._next is None:
            return 1.0
        return sigma / (sigma - ancestral_down(sigma, self._next, self.eta))

    def first(self, x_t: torch.Tensor, sigma: float, denoised: torch.Tensor, corrected: torch.Tensor,
              acted: torch.Tensor, steps_left: int) -> torch.Tensor:
        """The prediction of a step's first call that moves the next state as the official replacement:
        the correction plus, on the rows where it acted, the swap of the model's noise for fresh noise,
        both times ``factor``. Tensors are [B, D] in the k-diffusion form, ``acted`` [B] bool. Called
        for every first call (also outside the window: it follows the schedule)."""
        if self.kind == "unipc":
            return self._unipc(x_t, sigma, denoised, corrected, acted, steps_left)
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

    def _unipc(self, x_t: torch.Tensor, sigma: float, denoised: torch.Tensor, corrected: torch.Tensor,
               acted: torch.Tensor, steps_left: int) -> torch.Tensor:
        """UniPC: call i is at step i's predicted state (call 0 at the start). With D the official displacement
        of the state kept at this noise level (and of the prediction kept with it), the change c solves

            next predicted state's offset = a' * (this kept state's offset + k c) + w'_0 (c - D) + older = 0

        where the offsets are ours minus the official loop's, linear in the changes (``unipc_coefficients``
        for this step's corrector and the next step's predictor, the next noise level estimated as in
        ``factor``). ``steps_left`` at the first call is the pass's step count."""
        order, variant, lower_final = self.unipc
        index, self._steps = self._steps, self._steps + 1
        if index == 0:
            self._total = steps_left
        next_sigma = self._next_sigma(sigma, self._total + 1 - index)
        lam = -math.log(sigma)
        offsets = self._kept_offsets
        if corrected is denoised and self._state_offset is None:  # nothing carried yet
            self._lambdas = (self._lambdas + [lam])[-order:]
            self._predictions = (self._predictions + [denoised])[-order:]
            return denoised
        zero = torch.zeros_like(denoised)
        kept_state, k, state = x_t, 0.0, zero  # the start is the kept state: the official loop moves it
        if index > 0:
            step_order = self._order(index, order, lower_final)
            a, w, k = unipc_coefficients(self._lambdas, lam, step_order, variant)
            _, w_p, _ = unipc_coefficients(self._lambdas, lam, step_order, variant, corrector=False)
            # the offset (ours - official) of the state UniPC would keep with the model's own prediction
            state = a * (self._state_offset if self._state_offset is not None else zero)
            for weight, offset in zip(w, reversed(offsets), strict=False):
                state = state + weight * offset
            # the official loop's kept state, which it re-noises: the state ours would keep, less that offset
            kept_state = x_t + k * denoised - state
            for c, p, kept in zip(w, w_p, reversed(self._predictions), strict=False):
                kept_state = kept_state + (c - p) * kept
        displacement = zero if corrected is denoised else \
            self._displacement(kept_state, sigma, denoised, corrected, acted)
        state = state - displacement
        kept = (self._lambdas + [lam])[-order:]
        if next_sigma is None or index + 1 > self._total:
            change = displacement
        else:
            a2, w2, _ = unipc_coefficients(kept, -math.log(next_sigma), self._order(index + 1, order, lower_final),
                                           variant, corrector=False)
            rest = a2 * state - w2[0] * displacement
            for weight, offset in zip(w2[1:], reversed(offsets), strict=False):
                rest = rest + weight * offset
            change = -rest / (a2 * k + w2[0])
        self._state_offset = state + k * change
        self._lambdas = kept
        self._kept_offsets = (offsets + [change - displacement])[-order:]
        self._predictions = (self._predictions + [denoised + change])[-order:]
        return denoised + change

    def _order(self, step: int, order: int, lower_final: bool) -> int:
        """The order of UniPC's ``step`` (1-based): lower to start, and towards the end with lower order final."""
        return max(1, min(order, step, self._total + 1 - step) if lower_final else min(order, step))

    def _next_sigma(self, sigma: float, steps_left: int) -> float | None:
        """The next noise level after ``sigma`` (None at the end): the last two levels' ratio kept, or for a
        pass's first call (or a higher level, which starts a pass over) a log-uniform descent to
        ``SIGMA_FLOOR`` over the ``steps_left`` levels from this one."""
        previous, self._previous = self._previous, sigma
        if previous is not None and previous > sigma:
            return sigma * sigma / previous
        if sigma > SIGMA_FLOOR and steps_left > 1:
            return sigma * (SIGMA_FLOOR / sigma) ** (1.0 / (steps_left - 1))
        return None

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
