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
    add(o.OPT_CLIP_MODEL, "Concepts: CLIP model (an open_clip architecture name, e.g. ViT-B-16)")
    add(o.OPT_CLIP_PRETRAINED, "Concepts: CLIP weights: an open_clip pretrained tag (downloaded on first use), "
        "or the path of a local checkpoint (works offline)")
    add(o.OPT_CONCEPT_DECODE_SCALE, "Concepts: decode at this fraction of the size for CLIP (less memory and time, "
        "softer images)", gr.Slider, {"minimum": 0.25, "maximum": 1.0, "step": 0.05})
    add(o.OPT_CONCEPT_TILE, "Concepts: decode in tiles of this many latent pixels (0 = off; memory of one tile, "
        "about one more decode)", gr.Slider, {"minimum": 0, "maximum": 128, "step": 16})
    add(o.OPT_CONCEPT_CHECKPOINT, "Concepts: gradient checkpointing in the decoder (memory of one block, about one "
        "more decode)")


script_callbacks.on_ui_settings(on_ui_settings)
