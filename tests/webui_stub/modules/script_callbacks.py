"""Callback registry as in modules/script_callbacks.py: exceptions in callbacks are only reported."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


callback_map: dict[str, list[ScriptCallback]] = defaultdict(list)


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    callbacks.append(ScriptCallback(filename or "unknown file", fun, f"{category}/{name}"))


def _run(category: str, *args: Any) -> None:
    for c in list(callback_map["callbacks_" + category]):
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {c.name} for {category}", exc_info=True)


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _run("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _run("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _run("cfg_after_cfg", params)


def app_started_callback(demo, app) -> None:
    _run("app_started", demo, app)


def ui_settings_callback() -> None:
    _run("ui_settings")


def before_ui_callback() -> None:
    _run("before_ui")


def script_unloaded_callback() -> None:
    _run("script_unloaded")


def remove_callbacks_for_function(callback_func) -> None:
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback_to_remove)


def _register(category: str):
    def on(callback, *, name=None):
        add_callback(callback_map["callbacks_" + category], callback, name=name, category=category)

    return on


on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_app_started = _register("app_started")
on_ui_settings = _register("ui_settings")
on_ui_tabs = _register("ui_tabs")
on_before_ui = _register("before_ui")
on_script_unloaded = _register("script_unloaded")
