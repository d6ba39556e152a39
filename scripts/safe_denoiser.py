"""WebUI glue: the "Safe Denoiser" accordion, its per-job CFG callbacks and infotext.

Everything here translates between the WebUI and ``lib_safe_denoiser``. The WebUI only logs
exceptions raised by scripts and callbacks, so every failure is caught here and fails the job
closed: it is interrupted, its images are withheld and the infotext and comments say why.
Callbacks are registered for one job and removed after it on every path; a job that leaves
them behind (an exception in the WebUI) is cleaned up when the next job starts, and a stale
callback never acts on another job's processing object.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr
import torch
from modules import prompt_parser, script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from lib_safe_denoiser.concepts.args import INFOTEXT_FIELDS as CONCEPT_INFOTEXT_FIELDS
from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.concepts.args import from_infotext as concept_infotext
from lib_safe_denoiser.core.carry import UNIPC_DEFAULTS, carries_unipc
from lib_safe_denoiser.core.config import MODES
from lib_safe_denoiser.errors import SafeDenoiserError
from lib_safe_denoiser.generation.args import ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import INFOTEXT_FIELDS, KEY_ERROR, from_infotext, policy_infotext
from lib_safe_denoiser.generation.job import Job
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES, SCRIPT_LABELS, ScriptArgs
from lib_safe_denoiser.policy.bank_access import visible_names
from lib_safe_denoiser.policy.builtin_presets import DEFAULT_PRESET
from lib_safe_denoiser.policy.job_plan import job_banks, plan_job
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy, PolicyError, locked_settings_in
from lib_safe_denoiser.policy.presets_store import PresetError
from lib_safe_denoiser.policy.request_user import api_user
from lib_safe_denoiser.policy.users import User
from safe_denoiser_webui.concepts import build_concept_steering
from safe_denoiser_webui.model import encoder_for, model_problem, vae_id
from safe_denoiser_webui.options import OPT_ENCODE_BATCH, OPT_STEER_HIRES, option
from safe_denoiser_webui.preset_panel import VALUE_FIELDS, PresetPanel
from safe_denoiser_webui.services import FACTORY, POLICY_STORE, PRESET_STORE, STORE
from safe_denoiser_webui.users import auth_enabled, current_user
from safe_denoiser_webui.xyz import XYZ_ATTR

TITLE = "Safe Denoiser"
JOB_ATTR = "safe_denoiser_job"
ERROR_ATTR = "safe_denoiser_error"
PANEL = PresetPanel(PRESET_STORE)
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
    steering = job.steering
    if not steering.sampler_set:
        steering.set_sampler(*_sampler_carry(denoiser))
    # a step's second model call: every other call of a second-order sampler (as the WebUI's own NGMS
    # reads it), and PLMS's second call, which completes its first step
    second_order = bool(denoiser.sampler.config.options.get("second_order", False))
    plms = steering.carry is not None and steering.carry.kind == "plms"
    second = (second_order and denoiser.step % 2 == 1) or (plms and denoiser.step == 1)
    steering.capture(params.x, params.sigma, params.sampling_step, params.total_sampling_steps, second)


CARRIED = {"sample_euler": "step", "sample_euler_ancestral": "step", "ddim": "step", "sample_heun": "heun",
           "sample_dpmpp_sde": "midpoint", "sample_dpmpp_2m": "multistep", "plms": "plms", "unipc": "unipc"}
"""The WebUI's sampler functions the paper mode's carry supports (lib_safe_denoiser/core/carry.py)."""


def _sampler_carry(denoiser: Any) -> tuple[str | None, float, int, tuple[int, str, bool]]:
    """(carry kind, ancestral eta, seed, UniPC settings) of the pass's sampler: eta only where its function
    takes one (the WebUI sets ``sampler.eta`` for every sampler), the batch's first seed for the re-noising
    noise, and UniPC's order, variant and lower order final as the WebUI's settings run it (its
    ``vary_coeff`` variant is not carried)."""
    sampler = denoiser.sampler
    takes_eta = "eta" in inspect.signature(sampler.func).parameters
    eta = float(sampler.eta or 0.0) if takes_eta else 0.0
    seeds = getattr(denoiser.p, "seeds", None) or [getattr(denoiser.p, "seed", 0)]  # this batch's seeds
    data = shared.opts.data
    order, variant, lower_final = UNIPC_DEFAULTS
    unipc = (int(data.get("uni_pc_order", order)), str(data.get("uni_pc_variant", variant)),
             bool(data.get("uni_pc_lower_order_final", lower_final)))
    kind = CARRIED.get(getattr(sampler.func, "__name__", ""))
    if kind == "unipc" and not carries_unipc(unipc):
        kind = None
    return kind, eta, int(seeds[0] or 0), unipc


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


def drop_locked_overrides(p: Any) -> None:
    """Remove the settings the operator locked from the job's ``override_settings`` before the WebUI
    applies them (the REST routes refuse such requests outright), and say so on the job."""
    overrides = getattr(p, "override_settings", None) or {}
    if not overrides:
        return
    try:
        policy = POLICY_STORE.load()
    except PolicyError:
        return  # process() refuses the job, saying why
    locked = locked_settings_in(overrides, policy, operator=generation_user(p, policy).operator)
    for key in locked:
        del overrides[key]
    if locked:
        p.comment(f"Safe denoiser: the operator locked {', '.join(locked)}; the override was ignored.")


def _progress(done: int, total: int) -> None:
    shared.state.textinfo = f"Safe denoiser: encoding bank images {done}/{total}"


# ---------------------------------------------------------------------------------- the script
class SafeDenoiserScript(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        labels = SCRIPT_LABELS
        d = SafeDenoiserArgs()
        anyone = current_user(None)
        with InputAccordion(False, label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
            with gr.Row():
                bank = gr.Dropdown(label=labels["bank"], choices=visible_names(STORE, anyone), value=[],
                                   multiselect=True, elem_id=self.elem_id("bank"))
                refresh = gr.Button(value="\U0001f504", elem_classes=["tool"], elem_id=self.elem_id("refresh"))
                preset = gr.Dropdown(label=labels["preset"], choices=PANEL.choices(anyone), value=DEFAULT_PRESET,
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
                                                 choices=visible_names(STORE, anyone),
                                                 elem_id=self.elem_id("reference_bank"))
                    prior = gr.Slider(label=labels["prior"], minimum=0.001, maximum=0.999, step=0.001,
                                      value=d.prior, elem_id=self.elem_id("prior"))
                with gr.Row():
                    bandwidth = gr.Slider(label=labels["bandwidth"], minimum=0.05, maximum=30.0, step=0.05,
                                          value=d.bandwidth, elem_id=self.elem_id("bandwidth"))
                    gate = gr.Checkbox(label=labels["gate"], value=d.gate, elem_id=self.elem_id("gate"))
                    gate_margin = gr.Slider(label=labels["gate_margin"], minimum=0.0, maximum=10.0, step=0.05,
                                            value=d.gate_margin, elem_id=self.elem_id("gate_margin"))
                smoothing = gr.Slider(label=labels["smoothing"], minimum=0.0, maximum=3.0, step=0.05,
                                      value=d.smoothing, elem_id=self.elem_id("smoothing"))
            with gr.Accordion("Concepts (CLIP)", open=False):
                c = ConceptArgs()
                concepts = gr.Textbox(label=labels["concepts"], value=c.concepts, lines=1, max_lines=3,
                                      placeholder="nudity, violence", elem_id=self.elem_id("concepts"))
                with gr.Row():
                    concept_eta = gr.Slider(label=labels["concept_eta"], minimum=0.0, maximum=0.5,
                                            step=0.005, value=c.concept_eta, elem_id=self.elem_id("concept_eta"))
                    concept_gamma = gr.Slider(label=labels["concept_gamma"], minimum=0.0, maximum=300.0,
                                              step=1.0, value=c.concept_gamma, elem_id=self.elem_id("concept_gamma"))
                with gr.Row():
                    concept_window_start = gr.Slider(label=labels["concept_window_start"], minimum=0.0,
                                                     maximum=1.0, step=0.01, value=c.concept_window_start,
                                                     elem_id=self.elem_id("concept_window_start"))
                    concept_window_end = gr.Slider(label=labels["concept_window_end"], minimum=0.0,
                                                   maximum=1.0, step=0.01, value=c.concept_window_end,
                                                   elem_id=self.elem_id("concept_window_end"))
            with gr.Accordion("Presets", open=False):
                with gr.Row():
                    preset_name = gr.Textbox(label="Preset name (save as, rename to)", max_lines=1,
                                             elem_id=self.elem_id("preset_name"))
                    preset_global = gr.Checkbox(label="Global: for every user (operators only)", value=False,
                                                elem_id=self.elem_id("preset_global"))
                with gr.Row():
                    save = gr.Button(value="Save", elem_id=self.elem_id("preset_save"))
                    rename = gr.Button(value="Rename", elem_id=self.elem_id("preset_rename"))
                    delete = gr.Button(value="Delete", elem_id=self.elem_id("preset_delete"))
                    make_default = gr.Button(value="Make it my default", elem_id=self.elem_id("preset_default"))
                    load_default = gr.Button(value="Load my default", elem_id=self.elem_id("load_default"))
                preset_status = gr.Textbox(label="Presets", value=anyone_note(), interactive=False, max_lines=2,
                                           elem_id=self.elem_id("preset_status"))
            with gr.Accordion("Diagnostics of the last generation", open=False):
                show = gr.Button(value="Show", elem_id=self.elem_id("show_diagnostics"))
                summary = gr.Markdown(value="")
                with gr.Row():
                    plot = gr.Image(label="beta and distance to the bank per step", interactive=False,
                                    elem_id=self.elem_id("plot"))
                    nearest = gr.Gallery(label="Nearest bank images", columns=4, elem_id=self.elem_id("nearest"))

        values = [bank, mode, strength, window_start, window_end, reference_bank, prior, bandwidth, gate, gate_margin,
                  smoothing]
        by_name = dict(zip(VALUE_FIELDS, values, strict=True))

        def on_preset(name: str, request: gr.Request) -> list[Any]:
            status, updates = PANEL.load(name, request_identity(request))
            return [status, *updates]

        def on_save(name: str, shared_: bool, *current: Any, request: gr.Request) -> tuple[str, Any]:
            return PANEL.save(name, shared_, current, request_identity(request))

        def on_rename(name: str, new_name: str, request: gr.Request) -> tuple[str, Any]:
            return PANEL.rename(name, new_name, request_identity(request))

        def on_delete(name: str, request: gr.Request) -> tuple[str, Any]:
            return PANEL.delete(name, request_identity(request))

        def on_make_default(name: str, request: gr.Request) -> str:
            return PANEL.set_default(name, request_identity(request))

        def on_load_default(request: gr.Request) -> list[Any]:
            """Page load (javascript/safe_denoiser.js clicks this): the user's default preset and banks,
            and the accordion hidden where the operator enforces a preset and hides it from users."""
            user = request_identity(request)
            chosen = PANEL.default(user)
            status, updates = (PANEL.load(chosen.name, user) if chosen
                               else (anyone_note(user), [gr.update()] * len(values)))
            return [gr.update(visible=not accordion_hidden(user)), PANEL.dropdown(user, chosen and chosen.name),
                    status, *updates]

        preset.input(fn=on_preset, inputs=[preset], outputs=[preset_status, *values], show_progress=False)
        save.click(fn=on_save, inputs=[preset_name, preset_global, *[by_name[f] for f in VALUE_FIELDS]],
                   outputs=[preset_status, preset], show_progress=False)
        rename.click(fn=on_rename, inputs=[preset, preset_name], outputs=[preset_status, preset], show_progress=False)
        delete.click(fn=on_delete, inputs=[preset], outputs=[preset_status, preset], show_progress=False)
        make_default.click(fn=on_make_default, inputs=[preset], outputs=[preset_status], show_progress=False)
        load_default.click(fn=on_load_default, inputs=[], outputs=[enabled.accordion, preset, preset_status, *values],
                           show_progress=False)
        def preset_choices(request: gr.Request) -> Any:
            return PANEL.dropdown(request_identity(request))

        preset.focus(fn=preset_choices, inputs=[], outputs=[preset], show_progress=False)

        def refresh_banks(request: gr.Request) -> list[Any]:
            return [bank_choices(request)] * 2

        def show_diagnostics(request: gr.Request) -> tuple[str, Any, list[Any]]:
            return diagnostics(is_img2img, request)

        refresh.click(fn=refresh_banks, inputs=[], outputs=[bank, reference_bank], show_progress=False)
        for dropdown in (bank, reference_bank):  # banks come and go while the WebUI runs (the tab, REST, CLI)
            dropdown.focus(fn=bank_choices, inputs=[], outputs=[dropdown], show_progress=False)
        show.click(fn=show_diagnostics, inputs=[], outputs=[summary, plot, nearest])

        components = [enabled, bank, preset, mode, strength, window_start, window_end, reference_bank, prior,
                      bandwidth, gate, gate_margin, concepts, concept_eta, concept_gamma, concept_window_start,
                      concept_window_end, smoothing]
        by_field = dict(zip(SCRIPT_FIELD_NAMES, components, strict=True))
        self.infotext_fields = [(by_field[name], _paste(name)) for name, _ in INFOTEXT_FIELDS] + [
            (by_field[name], _paste(name, concept_infotext)) for name, _ in CONCEPT_INFOTEXT_FIELDS]
        return components

    # -- the job's life: before_process -> process -> (process_before_every_sampling, sampling,
    #    postprocess_batch_list) per batch and pass -> postprocess
    def before_process(self, p: Any, *args: Any) -> None:
        unregister_callbacks()  # whatever a job that died left behind
        drop_locked_overrides(p)

    def process(self, p: Any, *args: Any) -> None:
        try:
            a = ScriptArgs.from_script_args(args)
            overrides = getattr(p, XYZ_ATTR, None)
            if overrides:  # an XYZ axis value is the user's request too: the policy applies after it
                a = ScriptArgs.from_dict({**a.as_dict(), **overrides})
            policy = POLICY_STORE.load()  # read once per job: it names operators and the rules
            user = generation_user(p, policy)
            plan = plan_job(a.bank, user, PRESET_STORE, policy)
        except (ArgsError, PresetError) as e:
            _mark_failed(p, f"bad arguments: {e}.")
            return
        except SafeDenoiserError as e:  # an unreadable policy, or enforcement that cannot be set up
            _mark_failed(p, f"{e}")
            return
        resolved = plan.resolved
        concepts = a.concepts if a.concepts_on else None
        if resolved is None and concepts is None:
            p.extra_generation_params.update(policy_infotext(None, plan.notes))
            return
        fail_closed = resolved.fail_closed if concepts is None else True  # concepts: the user asked
        problem = model_problem(p.sd_model)
        try:
            if problem:
                raise SafeDenoiserError(problem)
            banks, reference = job_banks(plan, STORE, user) if resolved is not None else ((), None)
            concept_steering = build_concept_steering(concepts, p.sd_model) if concepts is not None else None
        except SafeDenoiserError as e:
            if fail_closed:
                _mark_failed(p, f"{e}")
            else:
                p.extra_generation_params.update(policy_infotext(None, [*plan.notes, f"not steered: {e}"]))
            return
        args_ = resolved.args if resolved is not None else a.bank
        job = Job(args_, banks, reference, p=p, preset=resolved.preset if resolved else None, notes=plan.notes,
                  fail_closed=fail_closed, enforced=bool(resolved and resolved.enforced), concepts=concepts,
                  concept_steering=concept_steering)
        setattr(p, JOB_ATTR, job)
        p.extra_generation_params.update(job.infotext())
        register_callbacks(job)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        job: Job | None = getattr(p, JOB_ATTR, None)
        if job is None or job.error is not None:
            return
        hires = bool(getattr(p, "is_hr_pass", False))
        if hires and not option(OPT_STEER_HIRES) and not job.enforced:  # enforced jobs steer every pass
            job.start_pass(None, new_image=False, concepts=False)
            return
        x = kwargs["x"]
        try:
            safe = FACTORY.build(job, alphas_cumprod=p.sd_model.alphas_cumprod, encoder=encoder_for(p.sd_model),
                                 vae_id=vae_id(p.sd_model), latent_shape=tuple(x.shape[1:]),
                                 batch_size=int(option(OPT_ENCODE_BATCH)), progress=_progress) if job.banks else None
        except Exception as e:  # noqa: BLE001 - a bad bank must not crash or pass unsteered
            message = f"cannot prepare bank {job.bank_names!r}: {e}"
            if job.fail_closed:
                fail_job(job, message)
            else:  # the operator lets enforced jobs through unsteered when steering cannot be set up
                job.notes = (*job.notes, f"not steered: {message}")
                job.start_pass(None, new_image=not hires)
                p.extra_generation_params.update(job.infotext())
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
            LAST_JOBS[(generation_user_name(p), bool(self.is_img2img))] = job  # the tab's own script knows its tab


# ---------------------------------------------------------------------------------- UI helpers
def bank_choices(request: gr.Request) -> Any:
    """The bank dropdowns' choices as they are on disk now, for the user of this page."""
    return gr.update(choices=visible_names(STORE, current_user(request_user(request))))


def request_user(request: gr.Request | None) -> str | None:
    """The gradio-auth user of a UI event (None without --gradio-auth)."""
    return getattr(request, "username", None)


def request_identity(request: gr.Request | None) -> User:
    return current_user(request_user(request))


def anyone_note(user: User | None = None) -> str:
    """What the presets panel says when nothing was loaded: who the presets belong to."""
    if not auth_enabled():
        return "This WebUI has no logins: everyone shares one set of presets (and may change the global ones)."
    return f"Your presets are yours alone; signed in as {user.label}." if user and user.name else ""


def accordion_hidden(user: User) -> bool:
    """Whether the operator's policy hides the accordion from ``user`` (an unreadable policy hides it:
    generations are refused anyway until an operator repairs it)."""
    try:
        return POLICY_STORE.load().hides_from(user.operator)
    except PolicyError:
        return not user.operator


def generation_user_name(p: Any) -> str | None:
    """Who a job runs for: the UI user (``p.user``), else the authenticated REST caller."""
    return getattr(p, "user", None) or api_user()


def generation_user(p: Any, policy: OperatorPolicy | None = None) -> User:
    return current_user(generation_user_name(p), policy)


def _paste(field: str, parse: Callable[[dict[str, Any]], dict[str, Any]] = from_infotext):
    def read(params: dict[str, Any]) -> Any:
        value = parse(params).get(field)
        if field == "bank" and value is not None:  # the multiselect takes a list
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    return read


def diagnostics(is_img2img: bool, request: gr.Request | None = None) -> tuple[str, Any, list[Any]]:
    """(summary, plot, nearest bank images) of the last job on this tab."""
    job = LAST_JOBS.get((current_user(request_user(request)).name, is_img2img))
    if job is None:
        return "No generation with the safe denoiser yet.", None, []
    s = job.trace.summary()
    hashes = ", ".join(b.short_hash for b in job.banks)
    text = (f"Bank **{job.bank_names}** ({hashes}), mode {job.args.mode}: acted on "
            f"{s.acted_steps}/{s.total_steps} steps, max beta {s.max_beta:.3g}.")
    if job.error:
        text += f"\n\nError: {job.error}"
    try:
        paths = [path for bank in job.banks for path in STORE.image_paths(bank.name)]
        nearest = [str(paths[i]) for i in job.trace.nearest_indices(4) if i < len(paths)]
    except SafeDenoiserError:
        nearest = []
    return text, job.trace.plot_image() if job.trace.steps else None, nearest


def on_script_unloaded() -> None:
    unregister_callbacks()
    FACTORY.clear()


script_callbacks.on_script_unloaded(on_script_unloaded)
