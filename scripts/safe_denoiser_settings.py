"""WebUI glue: the "Safe Denoiser" section of the Settings page (keys and defaults live in
``safe_denoiser_webui/options.py``)."""

from __future__ import annotations

import gradio as gr
from modules import script_callbacks, shared

from lib_safe_denoiser.banks.images import RESIZE_POLICIES
from safe_denoiser_webui import options as o


def on_ui_settings() -> None:
    def add(key: str, label: str, component=None, component_args=None, **kwargs) -> None:
        info = shared.OptionInfo(o.DEFAULTS[key], label, component, component_args, section=o.SECTION, **kwargs)
        shared.opts.add_option(key, info)

    add(o.OPT_STEER_HIRES, "Steer the hires-fix pass too (its latents are larger: the bank is encoded once more)")
    add(o.OPT_ENCODE_BATCH, "Bank images per VAE call when encoding a bank", gr.Slider,
        {"minimum": 1, "maximum": 32, "step": 1})
    add(o.OPT_DEFAULT_RESIZE, "How new banks fit their images to the generation size", gr.Radio,
        {"choices": list(RESIZE_POLICIES)})
    add(o.OPT_CACHE_LIMIT_MB, "Latent cache size limit in MB (least recently used caches are removed; 0 = no limit)",
        gr.Number, {"precision": 0, "minimum": 0})
    add(o.OPT_UPLOAD_MAX_FILES, "Most images in one upload (files or a zip)", gr.Number, {"precision": 0, "minimum": 1})
    add(o.OPT_UPLOAD_MAX_MB, "Largest upload in MB (all files together)", gr.Number, {"precision": 0, "minimum": 1})
    add(o.OPT_FOLDER_IMPORT, "Who may add images from folders on the server", gr.Radio,
        {"choices": list(o.FOLDER_IMPORT_CHOICES)})


script_callbacks.on_ui_settings(on_ui_settings)
