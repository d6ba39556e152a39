"""The WebUI's progress counter reaches the trace through the steering hand-overs: what the summary
counts as steps depends on it (see lib_safe_denoiser/generation/trace.py)."""

from __future__ import annotations

import pytest
import torch

from tests.generation.test_steering import CONDS, make

DPM_ADAPTIVE = ([0, 0, 1, 2, 3, 4], 3, [0, 1, 2, 3, 4, 4])
"""(the progress each model call saw, the pass's step count, the step each call belongs to): an
adaptive sampler that took more steps than asked for, whose last call belongs to its own step."""


@pytest.mark.parametrize("hand_over", ["outputs", "combined"])
def test_the_step_count_of_the_pass_reaches_the_trace(hand_over):
    steering, _, x_in, rows = make(4)
    ticks, total, steps = DPM_ADAPTIVE
    for tick in ticks:
        steering.capture(x_in, torch.full((4,), 2.0), tick, total)
        if hand_over == "outputs":
            steering.steer_outputs_(rows.clone(), CONDS, 1.0)
        else:
            steering.steer_combined(rows[:2].clone())
    assert [s.total for s in steering.trace.steps] == [total] * len(ticks)
    assert steering.trace.sampling_steps() == steps
    assert steering.trace.summary().total_steps == len(set(steps))
