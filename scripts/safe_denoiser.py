"""WebUI glue: the "Safe Denoiser" accordion, its per-job CFG callbacks and infotext.

Everything here translates between the WebUI and ``lib_safe_denoiser``. The WebUI only logs
exceptions raised by scripts and callbacks, so every failure is caught here and fails the job
closed: it is interrupted, its images are withheld and the infotext and comments say why.
Callbacks are registered for one job and removed after it on every path; a job that leaves
them behind (an exception in the WebUI) is cleaned up when the next job starts, and a stale
callback never acts on another job's processing object.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import torch
from modules import prompt_parser, script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from lib_safe_denoiser.core.config import MODES
from lib_safe_denoiser.errors import SafeDenoiserError
from lib_safe_denoiser.generation.args import FIELDS, ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import INFOTEXT_FIELDS, KEY_ERROR, from_infotext
from lib_safe_denoiser.generation.job import Job
from lib_safe_denoiser.policy.bank_access import visible_bank, visible_names
from lib_safe_denoiser.policy.builtin_presets import DEFAULT_PRESET, PRESETS, preset_fields, preset_names
from lib_safe_denoiser.policy.request_user import api_user
from lib_safe_denoiser.policy.users import User
from safe_denoiser_webui.model import encoder_for, model_problem, vae_id
from safe_denoiser_webui.options import OPT_ENCODE_BATCH, OPT_STEER_HIRES, option
from safe_denoiser_webui.services import FACTORY, STORE
from safe_denoiser_webui.users import current_user
from safe_denoiser_webui.xyz import XYZ_ATTR

TITLE = "Safe Denoiser"
JOB_ATTR = "safe_denoiser_job"
ERROR_ATTR = "safe_denoiser_error"
LAST_JOBS: dict[tuple[str | None, bool], Job] = {}
"""The last finished job per (user, tab is_img2img), for the diagnostics panel: nobody sees another's."""


class _Active:
    """The job the registered callbacks serve, and the CFG denoiser of the step under way (another
    job's, when a job without our hooks samples while a crashed job's callbacks are still registered)."""

    job: Job | None = None
    denoiser: Any = None


# ---------------------------------------------------------------------------------- callbacks
def _serving(denoiser: Any) -> Job | None:
    job = _Active.job
    if job is None or job.error is not None or job.steering is None:
        return None
    if denoiser is not None and getattr(denoiser, "p", None) is not job.p:
        return None  # a callback left over from another job: never touch this one
    return job


def _alphas_for(denoiser: Any) -> torch.Tensor | None:
    """alphas_cumprod for timestep samplers (eps outputs, DDPM timesteps), None for k-diffusion."""
    from modules.sd_samplers_timesteps import CFGDenoiserTimesteps

    return denoiser.alphas if isinstance(denoiser, CFGDenoiserTimesteps) else None


def _cond_scale(denoiser: Any, sigma0: float) -> float:
    """The scale CFGDenoiser.forward combines this step with (1 where it skipped the uncond pass)."""
    opts, p = shared.opts, denoiser.p
    early = opts.data.get("skip_early_cond", 0.0)
    if early != 0 and denoiser.step / denoiser.total_steps <= early:
        return 1.0
    s_min = getattr(denoiser.sampler, "s_min_uncond", getattr(p, "s_min_uncond", 0.0)) or 0.0
    if (denoiser.step % 2 or opts.data.get("s_min_uncond_all", False)) and s_min > 0 and sigma0 < s_min:
        return 1.0
    return p.cfg_scale * denoiser.cond_scale_miltiplier


def _step_callback(body):
    """A CFG callback that acts only for the job it serves; any failure fails that job closed
    (the WebUI would only log it)."""

    def callback(params: Any) -> None:
        if getattr(params, "denoiser", None) is not None:  # on_cfg_denoiser names the step's CFG denoiser;
            _Active.denoiser = params.denoiser  # the step's later callbacks do not, even when it is another job's
        denoiser = _Active.denoiser
        job = _serving(denoiser)
        if job is None:
            return
        try:
            body(params, job, denoiser)
        except Exception as e:  # noqa: BLE001
            fail_job(job, f"steering failed: {e}")

    callback.__name__ = body.__name__
    return callback


@_step_callback
def on_cfg_denoiser(params: script_callbacks.CFGDenoiserParams, job: Job, denoiser: Any) -> None:
    job.steering.capture(params.x, params.sigma)


@_step_callback
def on_cfg_denoised(params: script_callbacks.CFGDenoisedParams, job: Job, denoiser: Any) -> None:
    conds_list, _ = prompt_parser.reconstruct_multicond_batch(denoiser.sampler.sampler_extra_args["cond"],
                                                              denoiser.step)
    scale = _cond_scale(denoiser, job.steering.sigma0)
    job.steering.steer_outputs_(params.x, conds_list, scale, _alphas_for(denoiser))


@_step_callback
def on_cfg_after_cfg(params: script_callbacks.AfterCFGCallbackParams, job: Job, denoiser: Any) -> None:
    params.x = job.steering.steer_combined(params.x, _alphas_for(denoiser))


_CALLBACKS = (
    (script_callbacks.on_cfg_denoiser, on_cfg_denoiser),
    (script_callbacks.on_cfg_denoised, on_cfg_denoised),
    (script_callbacks.on_cfg_after_cfg, on_cfg_after_cfg),
)


def register_callbacks(job: Job) -> None:
    unregister_callbacks()
    _Active.job = job
    for register, fn in _CALLBACKS:
        register(fn, name="safe_denoiser")


def unregister_callbacks() -> None:
    for _, fn in _CALLBACKS:
        script_callbacks.remove_callbacks_for_function(fn)
    _Active.job = None
    _Active.denoiser = None


# ---------------------------------------------------------------------------------- failures
def fail_job(job: Job, message: str) -> None:
    """Stop the job and withhold its images: a generation the user asked to steer is never
    returned unsteered."""
    job.fail(message)
    _mark_failed(job.p, job.error or message)


def _mark_failed(p: Any, message: str) -> None:
    setattr(p, ERROR_ATTR, message)
    p.extra_generation_params[KEY_ERROR] = message
    p.comment(f"Safe denoiser: {message} The images were withheld.")
    shared.state.interrupt()


def _progress(done: int, total: int) -> None:
    shared.state.textinfo = f"Safe denoiser: encoding bank images {done}/{total}"


# ---------------------------------------------------------------------------------- the script
class SafeDenoiserScript(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        labels = {f.name: f.label for f in FIELDS}
        d = SafeDenoiserArgs()
        with InputAccordion(False, label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
            with gr.Row():
                bank = gr.Dropdown(label=labels["bank"], choices=visible_names(STORE, current_user(None)), value="",
                                   elem_id=self.elem_id("bank"))
                refresh = gr.Button(value="\U0001f504", elem_classes=["tool"], elem_id=self.elem_id("refresh"))
                preset = gr.Dropdown(label=labels["preset"], choices=preset_names(), value=DEFAULT_PRESET,
                                     elem_id=self.elem_id("preset"))
            with gr.Row():
                mode = gr.Radio(label=labels["mode"], choices=list(MODES), value=d.mode, elem_id=self.elem_id("mode"))
                strength = gr.Slider(label=labels["strength"], minimum=0.0, maximum=3.0, step=0.01,
                                     value=d.strength, elem_id=self.elem_id("strength"))
            with gr.Row():
                window_start = gr.Slider(label=labels["window_start"], minimum=0.0, maximum=1.0, step=0.01,
                                         value=d.window_start, elem_id=self.elem_id("window_start"))
                window_end = gr.Slider(label=labels["window_end"], minimum=0.0, maximum=1.0, step=0.01,
                                       value=d.window_end, elem_id=self.elem_id("window_end"))
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    reference_bank = gr.Dropdown(label=labels["reference_bank"], value="",
                                                 choices=visible_names(STORE, current_user(None)),
                                                 elem_id=self.elem_id("reference_bank"))
                    prior = gr.Slider(label=labels["prior"], minimum=0.001, maximum=0.999, step=0.001,
                                      value=d.prior, elem_id=self.elem_id("prior"))
                with gr.Row():
                    bandwidth = gr.Slider(label=labels["bandwidth"], minimum=0.05, maximum=30.0, step=0.05,
                                          value=d.bandwidth, elem_id=self.elem_id("bandwidth"))
                    gate = gr.Checkbox(label=labels["gate"], value=d.gate, elem_id=self.elem_id("gate"))
                    gate_margin = gr.Slider(label=labels["gate_margin"], minimum=0.0, maximum=10.0, step=0.05,
                                            value=d.gate_margin, elem_id=self.elem_id("gate_margin"))
            with gr.Accordion("Diagnostics of the last generation", open=False):
                show = gr.Button(value="Show", elem_id=self.elem_id("show_diagnostics"))
                summary = gr.Markdown(value="")
                with gr.Row():
                    plot = gr.Image(label="beta and distance to the bank per step", interactive=False,
                                    elem_id=self.elem_id("plot"))
                    nearest = gr.Gallery(label="Nearest bank images", columns=4, elem_id=self.elem_id("nearest"))

        recipe_outputs = [mode, strength, bandwidth, gate, window_start, window_end]
        preset.change(fn=preset_updates, inputs=[preset], outputs=recipe_outputs, show_progress=False)

        def refresh_banks(request: gr.Request) -> list[Any]:
            return [bank_choices(request)] * 2

        def show_diagnostics(request: gr.Request) -> tuple[str, Any, list[Any]]:
            return diagnostics(is_img2img, request)

        refresh.click(fn=refresh_banks, inputs=[], outputs=[bank, reference_bank], show_progress=False)
        for dropdown in (bank, reference_bank):  # banks come and go while the WebUI runs (the tab, REST, CLI)
            dropdown.focus(fn=bank_choices, inputs=[], outputs=[dropdown], show_progress=False)
        show.click(fn=show_diagnostics, inputs=[], outputs=[summary, plot, nearest])

        components = [enabled, bank, preset, mode, strength, window_start, window_end, reference_bank, prior,
                      bandwidth, gate, gate_margin]
        by_field = dict(zip((f.name for f in FIELDS), components, strict=True))
        self.infotext_fields = [(by_field[name], _paste(name)) for name, _ in INFOTEXT_FIELDS]
        return components

    # -- the job's life: before_process -> process -> (process_before_every_sampling, sampling,
    #    postprocess_batch_list) per batch and pass -> postprocess
    def before_process(self, p: Any, *args: Any) -> None:
        unregister_callbacks()  # whatever a job that died left behind

    def process(self, p: Any, *args: Any) -> None:
        try:
            a = SafeDenoiserArgs.from_script_args(args)
            overrides = getattr(p, XYZ_ATTR, None)
            if overrides:
                a = SafeDenoiserArgs.from_dict({**a.as_dict(), **overrides})
        except ArgsError as e:
            _mark_failed(p, f"bad arguments: {e}.")
            return
        if not a.enabled:
            return
        problem = model_problem(p.sd_model)
        try:
            if problem:
                raise SafeDenoiserError(problem)
            user = generation_user(p)
            bank = visible_bank(STORE, a.bank, user)
            reference = visible_bank(STORE, a.reference_bank, user) if a.mode == "odds" else None
        except SafeDenoiserError as e:
            _mark_failed(p, f"{e}")
            return
        job = Job(a.settled(), bank, reference, p=p)
        setattr(p, JOB_ATTR, job)
        p.extra_generation_params.update(job.infotext())
        register_callbacks(job)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        job: Job | None = getattr(p, JOB_ATTR, None)
        if job is None or job.error is not None:
            return
        hires = bool(getattr(p, "is_hr_pass", False))
        if hires and not option(OPT_STEER_HIRES):
            job.start_pass(None, new_image=False)
            return
        x = kwargs["x"]
        try:
            safe = FACTORY.build(job, alphas_cumprod=p.sd_model.alphas_cumprod, encoder=encoder_for(p.sd_model),
                                 vae_id=vae_id(p.sd_model), latent_shape=tuple(x.shape[1:]),
                                 batch_size=int(option(OPT_ENCODE_BATCH)), progress=_progress)
        except Exception as e:  # noqa: BLE001 - a bad bank must not crash or pass unsteered
            fail_job(job, f"cannot prepare bank {job.bank.name!r}: {e}")
            return
        job.start_pass(safe, new_image=not hires)

    def postprocess_batch_list(self, p: Any, pp: scripts.PostprocessBatchListArgs, *args: Any, **kwargs: Any) -> None:
        job: Job | None = getattr(p, JOB_ATTR, None)
        if job is not None:
            p.extra_generation_params.update(job.infotext())
        if getattr(p, ERROR_ATTR, None) is not None:
            pp.images.clear()

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        job: Job | None = getattr(p, JOB_ATTR, None)
        unregister_callbacks()
        if job is not None:
            job.steering, job.p = None, None  # keep the diagnostics, not the job's tensors
            LAST_JOBS[(generation_user(p).name, bool(getattr(p, "is_img2img", False)))] = job


# ---------------------------------------------------------------------------------- UI helpers
def preset_updates(name: str) -> list[Any]:
    """Component updates for a chosen preset (nothing changes for "custom")."""
    if name not in PRESETS:
        return [gr.update()] * 6
    f = preset_fields(name)
    return [gr.update(value=f[k]) for k in ("mode", "strength", "bandwidth", "gate", "window_start", "window_end")]


def bank_choices(request: gr.Request) -> Any:
    """The bank dropdowns' choices as they are on disk now, for the user of this page."""
    return gr.update(choices=visible_names(STORE, current_user(request_user(request))))


def request_user(request: gr.Request | None) -> str | None:
    """The gradio-auth user of a UI event (None without --gradio-auth)."""
    return getattr(request, "username", None)


def generation_user(p: Any) -> User:
    """Who a job runs for: the UI user (``p.user``), else the authenticated REST caller."""
    return current_user(getattr(p, "user", None) or api_user())


def _paste(field: str):
    def read(params: dict[str, Any]) -> Any:
        return from_infotext(params).get(field)

    return read


def diagnostics(is_img2img: bool, request: gr.Request | None = None) -> tuple[str, Any, list[Any]]:
    """(summary, plot, nearest bank images) of the last job on this tab."""
    job = LAST_JOBS.get((current_user(request_user(request)).name, is_img2img))
    if job is None:
        return "No generation with the safe denoiser yet.", None, []
    s = job.trace.summary()
    text = (f"Bank **{job.bank.name}** ({job.bank.short_hash}), mode {job.args.mode}: acted on "
            f"{s.acted_steps}/{s.total_steps} steps, max beta {s.max_beta:.3g}.")
    if job.error:
        text += f"\n\nError: {job.error}"
    try:
        paths = STORE.image_paths(job.bank.name)
        nearest = [str(paths[i]) for i in job.trace.nearest_indices(4) if i < len(paths)]
    except SafeDenoiserError:
        nearest = []
    return text, job.trace.plot_image() if job.trace.steps else None, nearest


def on_script_unloaded() -> None:
    unregister_callbacks()
    FACTORY.clear()


script_callbacks.on_script_unloaded(on_script_unloaded)
