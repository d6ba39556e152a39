"""The per-generation trace: summary numbers and a real plot image."""

from __future__ import annotations

import pytest
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.core.denoiser import Diagnostics
from lib_safe_denoiser.generation.trace import GenerationTrace


def test_trace_summarises_real_corrections_and_plots():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(8, 16, generator=gen)
    sd = SafeDenoiser(bank, None, SafeDenoiserConfig(mode="paper", sigma_min=2.0, gate_margin=1e9))
    trace = GenerationTrace()
    x0 = bank[:2] + 0.01
    for sigma in (8.0, 4.0, 1.0):
        sd.correct(x0, sigma, x0)
        trace.record(sd.last_diagnostics)
    summary = trace.summary()
    assert (summary.acted_steps, summary.total_steps) == (2, 3)
    assert abs(summary.max_beta - 0.33) < 1e-6
    assert trace.nearest_indices(2) == [0, 1]
    image = trace.plot_image()
    assert image.size == (600, 320) and len(set(image.getdata())) > 10


def diagnostics(acted: bool, sigma: float = 1.0) -> Diagnostics:
    diag = Diagnostics.empty(torch.tensor([sigma]), 0)
    diag.in_window[:] = True
    diag.acted[:] = acted
    diag.beta[:] = 0.5 if acted else 0.0
    return diag


def trace_of(*passes: list[tuple[int | None, bool]], total: int | None = None) -> GenerationTrace:
    """A trace of (progress tick, acted) per model call, one list per sampling pass."""
    trace = GenerationTrace()
    for calls in passes:
        trace.begin_pass()
        for tick, acted in calls:
            trace.record(diagnostics(acted), tick, total)
    return trace


@pytest.mark.parametrize("ticks, total, steps", [
    ([0, 0, 1, 2], 4, [0, 1, 2, 3]),  # Euler: the callback follows each step's only call
    ([0, 0, 0, 1, 1, 2, 2], 4, [0, 0, 1, 1, 2, 2, 3]),  # Heun: it follows the first of two calls
    ([0, 0, 0, 1, 2], 4, [0, 0, 1, 2, 3]),  # PLMS: two calls in the first step
    ([0], 1, [0]),  # one step
    ([0, 0, 1, 2, 3, 4], 3, [0, 1, 2, 3, 4, 4]),  # DPM adaptive: more steps than asked for
    ([0, 0, 1], 10, [0, 1, 2]),  # interrupted during step 2
    ([0, 0, 1], None, [0, 1, 2]),  # no step count: the last call is the step after its progress
])
def test_each_call_belongs_to_the_step_the_next_call_sees(ticks, total, steps):
    trace = trace_of([(t, True) for t in ticks], total=total)
    assert trace.sampling_steps() == steps
    assert trace.summary().total_steps == len(set(steps))


def test_without_a_progress_counter_each_call_is_a_step():
    trace = trace_of([(None, True), (None, False), (None, True)])
    assert trace.sampling_steps() == [0, 1, 2]
    assert (trace.summary().acted_steps, trace.summary().total_steps) == (2, 3)


def test_a_step_acted_if_any_of_its_calls_did_and_a_hires_pass_adds_its_steps():
    heun = [(0, False), (0, True), (0, False), (1, False), (1, False)]  # steps 0, 0, 1, 1, 2
    hires = [(0, True), (0, False), (0, False)]  # steps 0, 0, 1 of the second pass
    trace = trace_of(heun, hires, total=3)
    assert [r.pass_index for r in trace.steps] == [0] * 5 + [1] * 3
    assert trace.step_positions() == [0, 0, 1, 1, 2, 3, 3, 4]
    summary = trace.summary()
    assert (summary.acted_steps, summary.total_steps, summary.max_beta) == (2, 5, 0.5)


def test_the_last_call_of_a_pass_is_not_resolved_by_the_next_pass():
    trace = trace_of([(0, True), (0, True)], [(0, True)], total=2)
    assert trace.sampling_steps() == [0, 1, 1]
