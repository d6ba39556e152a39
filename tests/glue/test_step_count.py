""""Safe denoiser acted: x/y" counts sampling steps on every sampler, whatever its model calls per step.

The oracle groups the probe's model calls into steps from each sampler's own loop (Heun: two calls
per step but the last; PLMS: two in the first step; Euler, DDIM, DDIM CFG++: one), independently
of the WebUI's progress counter the glue reads; a step acted if any of its calls was changed.
"""

from __future__ import annotations

import pytest
import torch
from modules import shared

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_ERROR
from tests.glue import harness, oracle
from tests.glue.conftest import last_job

STEPS = 6


def steps_run(sampler: str, steps: int) -> int:
    """The WebUI's timestep samplers run one step fewer than their timesteps (10 steps: 9 when
    1000 // steps divides 1000)."""
    return len(harness._timesteps(steps)) - 1 if sampler in harness.TIMESTEP_SAMPLERS else steps


def calls_per_step(sampler: str, steps: int) -> list[int]:
    """How many model calls each step of a finished pass makes, from the sampler's loop."""
    steps = steps_run(sampler, steps)
    if sampler == "heun":
        return [2] * (steps - 1) + [1]
    if sampler == "plms":
        return [2] + [1] * (steps - 1)
    return [1] * steps


def acted_steps(calls: list[harness.CfgCall], groups: list[int]) -> int:
    """Steps in which the correction changed any call's outputs."""
    changed = [bool(oracle.row_change(c).abs().amax() > 0) for c in calls]
    assert sum(groups) >= len(changed)
    acted, start = 0, 0
    for size in groups:
        acted += any(changed[start:start + size])
        start += size
    return acted


def constant(window: tuple[float, float] = (0.0, 1.0)):
    return [{"enabled": True, "bank": "unsafe", "preset": "custom", "mode": "constant", "strength": 0.5,
             "window_start": window[0], "window_end": window[1]}]


@pytest.mark.parametrize("sampler", harness.SAMPLERS)
def test_a_whole_window_acts_on_every_step_not_every_call(script, glue, sampler):
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=3.0)
    res = harness.run_job(script, constant(), sampler=sampler, steps=STEPS, p=p, probe=probe)
    assert KEY_ERROR not in res.p.extra_generation_params
    assert len(probe.calls) == sum(calls_per_step(sampler, STEPS))
    assert res.p.extra_generation_params[KEY_ACTED] == f"{STEPS}/{STEPS}"


@pytest.mark.parametrize("sampler", harness.SAMPLERS)
@pytest.mark.parametrize("window", [(0.0, 0.45), (0.3, 0.7), (0.55, 1.0)])
def test_a_partial_window_counts_the_steps_any_of_whose_calls_acted(script, glue, sampler, window):
    probe = harness.Probe()
    p = harness.Processing(sd_model=shared.sd_model, cfg_scale=3.0)
    res = harness.run_job(script, constant(window), sampler=sampler, steps=10, p=p, probe=probe)
    expected, total = acted_steps(probe.calls, calls_per_step(sampler, 10)), steps_run(sampler, 10)
    assert 0 < expected < total
    assert res.p.extra_generation_params[KEY_ACTED] == f"{expected}/{total}"


@pytest.mark.parametrize("sampler, interrupt_at, calls", [
    ("euler", 4, 4), ("heun", 3, 5), ("heun", 1, 1), ("plms", 2, 3), ("ddim", 1, 1),
])
def test_an_interrupted_pass_counts_the_steps_it_ran(script, glue, sampler, interrupt_at, calls):
    """Interrupt during step ``interrupt_at - 1``: the calls made until then, in that many steps."""
    probe = harness.Probe()
    res = harness.run_job(script, constant(), sampler=sampler, steps=10, interrupt_at=interrupt_at, probe=probe)
    assert len(probe.calls) == calls
    assert res.p.extra_generation_params[KEY_ACTED] == f"{interrupt_at}/{interrupt_at}"


def test_the_hires_pass_adds_its_own_steps(script, glue):
    """Heun, 10 steps then a hires pass of 6 steps (denoising strength 0.5): 16 steps in 19 + 11 calls."""
    probe = harness.Probe()
    res = harness.run_job(script, constant(), sampler="heun", steps=10, hires_hw=(12, 12), probe=probe)
    assert len(probe.calls) == 19 + 11
    assert res.p.extra_generation_params[KEY_ACTED] == "16/16"
    trace = last_job(glue).trace
    assert trace.step_positions()[-1] == 15 and len(trace.steps) == 30


def test_the_diagnostics_plot_one_point_per_call_on_the_step_axis(script, glue):
    harness.run_job(script, constant(), sampler="heun", steps=STEPS)
    trace = last_job(glue).trace
    assert trace.step_positions() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert torch.tensor(trace.step_positions()).diff().ge(0).all()
