"""The paper mode's carry against the official loop (benchmarks/official_reference.py) on every sampler
family: on the 2-D mixture, with the same sampler noise and the same re-noising noise, each carried
sample ends where the official state replacement puts it, and the prediction corrected alone does not."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_parity import SAMPLERS, hooked, mixture_problem, schedule
from benchmarks.official_reference import KernelFast, _unipc, sample, state_replacement
from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig

SAMPLES = 200
STEPS = 50
CLOSE = 0.05
"""Nine samples in ten must end this close to the reference, as a share of the reference's mean
displacement (the rest may fall into another mode: a tiny difference from the estimated next noise
level decides it near a boundary)."""


@pytest.fixture(scope="module")
def problem():
    sigmas, window, _ = schedule(STEPS)
    denoise, bank, shape, _, _ = mixture_problem()
    config = SafeDenoiserConfig(mode="paper", gate_margin=math.inf, sigma_min=window[0], sigma_max=window[1],
                                project_bank=False, reference_dim=0, n_nearest=0)
    noise = torch.randn((SAMPLES, *shape), generator=torch.Generator().manual_seed(0))
    return sigmas, window, denoise, KernelFast(bank), SafeDenoiser(bank, None, config), noise


@pytest.mark.parametrize("kind", SAMPLERS)
def test_a_carried_sample_ends_where_the_official_replacement_puts_it(problem, kind):
    sigmas, window, denoise, repel, safe, noise = problem

    def run(model, replace=None):
        return sample(kind, model, noise * sigmas[0], sigmas, torch.Generator().manual_seed(1), replace)

    plain = run(denoise)
    reference = run(denoise, state_replacement(repel, window, torch.Generator().manual_seed(2)))
    ours = run(hooked(denoise, safe, kind, sigmas, seed=2))
    alone = run(hooked(denoise, safe, kind, sigmas))
    moved = (reference - plain).norm(dim=1).mean()
    assert moved > 1.0
    assert (ours - reference).norm(dim=1).quantile(0.9) < CLOSE * moved
    assert (alone - reference).norm(dim=1).median() > 0.5 * moved


@pytest.mark.parametrize("settings", [(2, "bh2", True), (3, "bh2", False), (1, "bh1", True), (4, "bh1", True)])
def test_unipc_is_carried_under_each_of_the_webuis_settings(problem, settings):
    """UniPC's order, variant and lower order final (the WebUI's settings) change its linear step: the carry
    follows them, so a carried sample still ends where the official replacement puts it. (Carried with the
    default order 3 and bh1 instead, the order-2 bh2 and the order-1 samples end 0.56 and 1.0 of the
    displacement away; lower order final changes only the last steps, long after the window.)"""
    sigmas, window, denoise, repel, safe, noise = problem
    order, variant, lower_final = settings

    def run(model, replace=None):
        return _unipc(model, noise * sigmas[0], sigmas, replace, order, variant, lower_final)

    plain = run(denoise)
    reference = run(denoise, state_replacement(repel, window, torch.Generator().manual_seed(2)))
    ours = run(hooked(denoise, safe, "unipc", sigmas, seed=2, unipc=settings))
    moved = (reference - plain).norm(dim=1).mean()
    assert moved > 1.0
    assert (ours - reference).norm(dim=1).quantile(0.9) < CLOSE * moved
