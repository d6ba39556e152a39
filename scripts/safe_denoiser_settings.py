"""WebUI glue: the "Safe Denoiser" section of the Settings page (keys and defaults live in
``safe_denoiser_webui/options.py``)."""

from __future__ import annotations

import gradio as gr
from modules import script_callbacks, shared

from safe_denoiser_webui.options import DEFAULTS, OPT_ENCODE_BATCH, OPT_STEER_HIRES, SECTION


def on_ui_settings() -> None:
    add = shared.opts.add_option
    add(OPT_STEER_HIRES, shared.OptionInfo(
        DEFAULTS[OPT_STEER_HIRES],
        "Steer the hires-fix pass too (its latents are larger: the bank is encoded once more)", section=SECTION))
    add(OPT_ENCODE_BATCH, shared.OptionInfo(
        DEFAULTS[OPT_ENCODE_BATCH], "Bank images per VAE call when encoding a bank", gr.Slider,
        {"minimum": 1, "maximum": 32, "step": 1}, section=SECTION))


script_callbacks.on_ui_settings(on_ui_settings)
