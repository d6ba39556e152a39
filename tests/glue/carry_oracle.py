"""The carried prediction of every call of a paper-mode job, from what a Probe saw (an independent oracle).

The formulas of the official loop's state replacement are written out here, not taken from
core/carry.py: the step's first call moves the next state by the whole correction, re-noised,
through the factor sigma / (sigma - sigma_next) (sigma_next: the last two steps' ratio, or a
log-uniform descent to 0.03 on the first step); Heun's second call adds the rest.
"""

from __future__ import annotations

import torch

from tests.glue import harness, oracle

FLOOR = 0.03
TOLERANCE = {"rtol": 2e-3, "atol": 2e-3}
"""float32 through eps <-> x0 and a factor up to ~10."""


def k_form(call: harness.CfgCall) -> tuple[torch.Tensor, torch.Tensor]:
    """The images' noisy latents and noise levels in the k-diffusion form."""
    n = len(call.conds_list)
    x, sigma = call.x_in[-n:], call.sigma_in[-n:]
    if call.denoiser.__class__.__name__ == "CFGDenoiserTimesteps":
        a = call.denoiser.alphas[sigma.to(int)].double()
        return x / a.sqrt().reshape(-1, 1, 1, 1).float(), ((1 - a) / a).sqrt()
    return x, sigma.double()


def carried_predictions(calls: list[harness.CfgCall], safe, *, steps: int, heun: bool, seed: int = 0):
    """(what the WebUI returned, what the official replacement implies) in x0, per call."""
    gen = torch.Generator().manual_seed(seed)
    previous, pending = None, None
    out = []
    for i, call in enumerate(calls):
        unsteered, corrected = oracle.expected_x0(call, safe)
        x, sigma = k_form(call)
        s = float(sigma[-1])
        n = len(call.conds_list)
        returned = oracle.to_x0(call, call.x_in[-n:], call.denoised)
        if heun and i % 2 == 1:
            expected = unsteered if pending is None else unsteered + pending
            pending = None
            out.append((returned, expected))
            continue
        nxt = s * s / previous if previous is not None else s * (FLOOR / s) ** (1 / (steps - 1))
        factor, previous = s / (s - nxt), s
        pending = None
        if torch.equal(corrected, unsteered):
            out.append((returned, unsteered))
            continue
        noise = torch.randn(unsteered.flatten(1).shape, generator=gen).reshape(unsteered.shape)
        acted = (corrected != unsteered).flatten(1).any(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
        change = corrected - unsteered + acted * (s * noise - (x - unsteered))
        if heun:
            pending = (factor - 1) * change
        out.append((returned, unsteered + factor * change))
    return out


def assert_every_call_carried(calls: list[harness.CfgCall], safe, *, steps: int, heun: bool = False) -> None:
    """Every CFG call returned the carried correction of the WebUI's own prediction."""
    for returned, expected in carried_predictions(calls, safe, steps=steps, heun=heun):
        torch.testing.assert_close(returned, expected, **TOLERANCE)
