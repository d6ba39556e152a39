"""The per-generation trace: summary numbers and a real plot image."""

from __future__ import annotations

import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.generation.trace import GenerationTrace


def test_trace_summarises_real_corrections_and_plots():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(8, 16, generator=gen)
    sd = SafeDenoiser(bank, None, SafeDenoiserConfig(mode="paper", sigma_min=2.0, gate_margin=1e9))
    trace = GenerationTrace()
    x0 = bank[:2] + 0.01
    for step, sigma in enumerate([8.0, 4.0, 1.0]):
        sd.correct(x0, sigma, x0)
        trace.record(step, sd.last_diagnostics)
    summary = trace.summary()
    assert (summary.acted_steps, summary.total_steps) == (2, 3)
    assert abs(summary.max_beta - 0.33) < 1e-6
    assert trace.nearest_indices(2) == [0, 1]
    image = trace.plot_image()
    assert image.size == (600, 320) and len(set(image.getdata())) > 10
