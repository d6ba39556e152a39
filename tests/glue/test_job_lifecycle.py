"""Nothing leaks from one job into the next, on every path a job can end by: normally, by the
user's Interrupt, by an exception inside the WebUI (no postprocess), or by a bank that fails."""

from __future__ import annotations

import pytest
import torch
from modules import errors, script_callbacks, shared

from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_ERROR
from tests.glue import harness, oracle
from tests.glue.conftest import last_job, our_callbacks
from tests.glue.test_samplers import EITHER_AND_SAFE, odds

CRASH_AT = 4
"""The CFG call in which the model raises: steering is under way (inputs captured, outputs not)."""


def crash(script, sampler: str = "euler") -> None:
    """A steered job that dies inside sampling: the WebUI's process_images never reaches postprocess."""
    with pytest.raises(RuntimeError, match="out of memory"):
        harness.run_job(script, odds(), sampler=sampler, model_fails_at=CRASH_AT)


def assert_same_run(a: harness.JobResult, b: harness.JobResult) -> None:
    assert torch.equal(a.samples, b.samples)
    assert len(a.previews) == len(b.previews)
    assert all(torch.equal(x, y) for x, y in zip(a.previews, b.previews, strict=True))


class CallbackWatch:
    """Which of the extension's callbacks are registered at each CFG call of a job."""

    def __init__(self, glue) -> None:
        self.glue = glue
        self.seen: list[list[str]] = []

    def __enter__(self) -> CallbackWatch:
        script_callbacks.on_cfg_denoiser(self._look, name="watch")
        return self

    def __exit__(self, *exc) -> None:
        script_callbacks.remove_callbacks_for_function(self._look)

    def _look(self, params) -> None:
        self.seen.append(our_callbacks(self.glue))


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_the_next_job_samples_without_a_crashed_jobs_callbacks(script, glue, sampler):
    """before_process removes what a crashed job left, so a job with the extension disabled runs
    without any of its callbacks, bit for bit as if the extension were not installed."""
    clean = harness.run_job(None, [], sampler=sampler)
    crash(script, sampler)
    assert len(our_callbacks(glue)) == 3, "the WebUI skipped postprocess: the callbacks are still there"
    with CallbackWatch(glue) as watch:
        disabled = harness.run_job(script, [False], sampler=sampler)
    assert watch.seen and all(seen == [] for seen in watch.seen)
    assert_same_run(disabled, clean)
    assert len(disabled.images) == 2 and not shared.state.interrupted


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_stale_callbacks_never_touch_a_job_without_the_extensions_hooks(script, glue, sampler):
    """A job that runs no hook of ours (another script's inner generation, a fork that skips
    before_process) is untouched by the callbacks a crashed job left: bit for bit the clean run,
    not interrupted, nothing reported, and the crashed job is not failed by it."""
    clean = harness.run_job(None, [], sampler=sampler)
    crash(script, sampler)
    stale_job = glue._Active.job
    errors.reported.clear()
    foreign = harness.run_job(None, [], sampler=sampler)
    assert_same_run(foreign, clean)
    assert not shared.state.interrupted and errors.reported == [] and stale_job.error is None
    harness.run_job(script, [False], sampler=sampler)  # any job with the extension loaded cleans up
    assert our_callbacks(glue) == []


def test_a_steered_job_after_a_crash_is_the_same_as_without_it(script, glue):
    first = harness.run_job(script, odds(), prompts=EITHER_AND_SAFE)
    crash(script)
    again = harness.run_job(script, odds(), prompts=EITHER_AND_SAFE)
    assert_same_run(again, first)
    assert again.p.extra_generation_params[KEY_ACTED] == first.p.extra_generation_params[KEY_ACTED]
    assert our_callbacks(glue) == []


def test_user_interrupt_returns_the_steered_latent_and_removes_the_callbacks(script, glue):
    """Interrupt returns the sampler's last latent, the cond rows' x0 of the last step, as the
    image: it carries the correction; the callbacks go with the job and the next one is clean."""
    clean = harness.run_job(None, [], prompts=EITHER_AND_SAFE)
    probe = harness.Probe()
    res = harness.run_job(script, odds(), interrupt_at=3, prompts=EITHER_AND_SAFE, probe=probe)
    assert len(probe.calls) == 3 and len(res.images) == 2 and KEY_ERROR not in res.p.extra_generation_params
    assert our_callbacks(glue) == []
    safe = oracle.job_denoiser(glue)
    last = probe.calls[-1]
    unsteered, expected = oracle.expected_x0(last, safe)
    base = oracle.to_x0(last, last.x_in[oracle.first_cond_rows(last)], last.rows_before[oracle.first_cond_rows(last)])
    torch.testing.assert_close(res.samples, base + (expected - unsteered), **oracle.TOLERANCE)
    assert not torch.allclose(expected, unsteered, atol=1e-3), "the correction acted on the returned step"
    assert torch.equal(res.samples, res.previews[-1])
    assert_same_run(harness.run_job(script, [False], prompts=EITHER_AND_SAFE), clean)


def test_a_bank_that_fails_on_the_hires_pass_fails_closed(script, glue, monkeypatch):
    """The first pass is steered, then the bank cannot be prepared at the hires size: the job is
    interrupted, its images withheld, the reason recorded, and the next job runs normally."""
    latents = glue.STORE.latents

    def fails_at_hires_size(name, **kwargs):
        if kwargs["latent_hw"] == (12, 12):
            raise MemoryError("not enough memory to encode the bank at 96x96")
        return latents(name, **kwargs)

    monkeypatch.setattr(glue.STORE, "latents", fails_at_hires_size)
    res = harness.run_job(script, odds(), hires_hw=(12, 12), prompts=EITHER_AND_SAFE)
    error = res.p.extra_generation_params[KEY_ERROR]
    assert res.images == [] and "cannot prepare bank 'unsafe'" in error and "96x96" in error
    assert any("withheld" in c for c in res.p.comments) and shared.state.interrupted
    trace = last_job(glue).trace
    assert len(trace.steps) == 10 and any(s.acted for s in trace.steps), "the first pass was steered"
    assert our_callbacks(glue) == []
    monkeypatch.undo()
    assert len(harness.run_job(script, odds(), hires_hw=(12, 12)).images) == 2


@pytest.mark.parametrize("flags, message", [
    ({"is_sd3": True}, "SD3"),
    ({"cond_stage_key": "edit"}, "instruct-pix2pix"),
    ({"alphas_cumprod": None}, "alphas_cumprod"),
])
def test_models_it_cannot_steer_are_refused(script, glue, flags, message):
    shared.sd_model = harness.TinyModel(**flags)
    res = harness.run_job(script, odds())
    assert res.images == [] and message in res.p.extra_generation_params[KEY_ERROR]
    assert any("withheld" in c for c in res.p.comments) and our_callbacks(glue) == []


def test_a_model_without_a_noise_schedule_attribute_is_refused(script, glue):
    model = harness.TinyModel()
    del model.alphas_cumprod
    shared.sd_model = model
    res = harness.run_job(script, odds())
    assert res.images == [] and "alphas_cumprod" in res.p.extra_generation_params[KEY_ERROR]


def test_unload_removes_callbacks(script, glue):
    script.process(harness.Processing(sd_model=shared.sd_model), *odds())
    assert len(our_callbacks(glue)) == 3
    script_callbacks.script_unloaded_callback()
    assert our_callbacks(glue) == []
