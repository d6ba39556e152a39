"""The "Safe Denoiser policy" tab: the operator's policy as a form (gradio only, no WebUI import).

Everyone sees the rules their generations follow; only operators may change them, and a save
carries the revision the form was loaded with, so an operator never silently undoes a change made
meanwhile in another tab, another WebUI process or over REST.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.errors import SafeDenoiserError
from lib_safe_denoiser.policy.operator_policy import OperatorPolicy, PolicyStore
from lib_safe_denoiser.policy.presets_store import SCOPE_BUILTIN, SCOPE_GLOBAL, PresetStore
from lib_safe_denoiser.policy.users import User

TAB_TITLE = "Safe Denoiser policy"
TAB_ID = "safe_denoiser_policy"
FORM_FIELDS = ("enforce", "preset", "floor_banks", "min_strength", "window_floor", "window_start", "window_end",
               "fail_closed", "hide_accordion", "operators", "locked_settings", "revision")
"""The form's inputs, in the order the actions take them (``window_floor`` says whether a window is required)."""


def _names(text: str) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


@dataclass(frozen=True)
class PolicyPanel:
    policy: PolicyStore
    presets: PresetStore
    banks: BankStore
    user_of: Callable[[gr.Request | None], User]

    def preset_choices(self) -> list[str]:
        """What an operator may enforce: global presets and the built-in recipes."""
        return [p.name for scope in (SCOPE_GLOBAL, SCOPE_BUILTIN) for p in self.presets.list(scope)]

    def form(self, request: gr.Request | None) -> list[Any]:
        """The policy on disk now, as updates of the form, then the status line."""
        user = self.user_of(request)
        try:
            p = self.policy.load()
        except SafeDenoiserError as e:
            return [gr.update()] * len(FORM_FIELDS) + [f"{e} An operator may save the form to replace it."]
        window = p.floor_window or (0.0, 0.0)
        values = {"enforce": p.enforce, "preset": p.preset or None, "floor_banks": list(p.floor_banks),
                  "min_strength": p.min_strength, "window_floor": p.floor_window is not None,
                  "window_start": window[0], "window_end": window[1], "fail_closed": p.fail_closed,
                  "hide_accordion": p.hide_accordion, "operators": ", ".join(p.operators),
                  "locked_settings": ", ".join(p.locked_settings), "revision": p.revision}
        choices = {"preset": self.preset_choices(), "floor_banks": [b.name for b in self.banks.list()
                                                                    if b.owner is None]}
        updates = [gr.update(value=values[f], **({"interactive": user.operator} if f != "revision" else {}),
                             **({"choices": choices[f]} if f in choices else {})) for f in FORM_FIELDS]
        who = "You are an operator: you may change it." if user.operator else (
            "Only operators may change it; this is what applies to your generations.")
        changed = f" Revision {p.revision}, saved {p.updated} by {p.updated_by}." if p.revision else ""
        return [*updates, f"{who}{changed}"]

    def save(self, request: gr.Request | None, *values: Any) -> list[Any]:
        """Save the form (operators only); the answer is the form as now on disk and what happened."""
        user = self.user_of(request)
        v = dict(zip(FORM_FIELDS, values, strict=True))
        try:
            policy = OperatorPolicy(
                enforce=bool(v["enforce"]), preset=v["preset"] or "", floor_banks=tuple(v["floor_banks"] or ()),
                min_strength=float(v["min_strength"] or 0.0),
                floor_window=(float(v["window_start"]), float(v["window_end"])) if v["window_floor"] else None,
                fail_closed=bool(v["fail_closed"]), hide_accordion=bool(v["hide_accordion"]),
                operators=tuple(_names(v["operators"])), locked_settings=tuple(_names(v["locked_settings"])),
                revision=int(v["revision"] or 0))
            saved = self.policy.save(policy, user=user.name, is_operator=user.operator,
                                     check_preset=self.presets.resolve_shared)
        except SafeDenoiserError as e:
            return [gr.update()] * len(FORM_FIELDS) + [f"Not saved: {e}"]
        *form, _ = self.form(request)
        return [*form, f"Saved: revision {saved.revision}."]

    def build(self) -> gr.Blocks:
        with gr.Blocks(analytics_enabled=False) as blocks:
            gr.Markdown("Rules every generation of this WebUI follows. **Enforce** steers every generation (API "
                        "calls, img2img, hires fix, XYZ plots included) with the chosen global or built-in preset; "
                        "the **floors** raise what users ask for; with **fail closed** a job that cannot be steered "
                        f"is refused. Global presets are saved from the accordion ('{SCOPE_GLOBAL}' box) by "
                        "operators.")
            with gr.Row():
                enforce = gr.Checkbox(label="Enforce: steer every generation", elem_id=f"{TAB_ID}_enforce")
                preset = gr.Dropdown(label="Enforced preset (global or built-in)", choices=[],
                                     elem_id=f"{TAB_ID}_preset")
                fail_closed = gr.Checkbox(label="Fail closed: refuse a job that cannot be steered", value=True,
                                          elem_id=f"{TAB_ID}_fail_closed")
                hide = gr.Checkbox(label="Hide the accordion from users while enforcing",
                                   elem_id=f"{TAB_ID}_hide_accordion")
            with gr.Row():
                floor_banks = gr.Dropdown(label="Always-on banks (shared banks)", multiselect=True, choices=[],
                                          elem_id=f"{TAB_ID}_floor_banks")
                min_strength = gr.Number(label="Minimum strength", value=0.0, minimum=0.0,
                                         elem_id=f"{TAB_ID}_min_strength")
            with gr.Row():
                window_floor = gr.Checkbox(label="Require a window", elem_id=f"{TAB_ID}_window_floor")
                window_start = gr.Slider(label="Window that must be covered: from", minimum=0.0, maximum=1.0,
                                         step=0.01, value=0.0, elem_id=f"{TAB_ID}_window_start")
                window_end = gr.Slider(label="until", minimum=0.0, maximum=1.0, step=0.01, value=0.0,
                                       elem_id=f"{TAB_ID}_window_end")
            with gr.Row():
                operators = gr.Textbox(label="Operators (comma-separated, beside --safe-denoiser-operators)",
                                       elem_id=f"{TAB_ID}_operators")
                locked = gr.Textbox(label="Locked settings (keys nobody may change over the API or "
                                          "override_settings)", elem_id=f"{TAB_ID}_locked_settings")
                revision = gr.Number(label="Revision", value=0, precision=0, interactive=False,
                                     elem_id=f"{TAB_ID}_revision")
            with gr.Row():
                reload = gr.Button(value="Reload", elem_id=f"{TAB_ID}_reload")
                save = gr.Button(value="Save", variant="primary", elem_id=f"{TAB_ID}_save")
            status = gr.Textbox(label="Policy", interactive=False, elem_id=f"{TAB_ID}_status")

            form = [enforce, preset, floor_banks, min_strength, window_floor, window_start, window_end, fail_closed,
                    hide, operators, locked, revision]

            def load(request: gr.Request) -> list[Any]:
                return self.form(request)

            def store(*values: Any, request: gr.Request) -> list[Any]:
                return self.save(request, *values)

            blocks.load(fn=load, inputs=[], outputs=[*form, status])
            reload.click(fn=load, inputs=[], outputs=[*form, status])
            save.click(fn=store, inputs=form, outputs=[*form, status])
        return blocks
