"""The extension's settings: keys, defaults and how the glue reads them (registered by
``scripts/safe_denoiser_settings.py``)."""

from __future__ import annotations

from typing import Any

from modules import shared

from lib_safe_denoiser.concepts.constants import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED

SECTION = ("safe_denoiser", "Safe Denoiser")

OPT_STEER_HIRES = "safe_denoiser_steer_hires"
OPT_ENCODE_BATCH = "safe_denoiser_encode_batch"
OPT_DEFAULT_RESIZE = "safe_denoiser_default_resize"
OPT_CACHE_LIMIT_MB = "safe_denoiser_cache_limit_mb"
OPT_UPLOAD_MAX_FILES = "safe_denoiser_upload_max_files"
OPT_UPLOAD_MAX_MB = "safe_denoiser_upload_max_mb"
OPT_FOLDER_IMPORT = "safe_denoiser_folder_import"
OPT_CLIP_MODEL = "safe_denoiser_clip_model"
OPT_CLIP_PRETRAINED = "safe_denoiser_clip_pretrained"
OPT_CONCEPT_DECODE_SCALE = "safe_denoiser_concept_decode_scale"
OPT_CONCEPT_TILE = "safe_denoiser_concept_tile"
OPT_CONCEPT_CHECKPOINT = "safe_denoiser_concept_checkpoint"

FOLDER_IMPORT_CHOICES = ("operators", "nobody")

DEFAULTS: dict[str, Any] = {
    OPT_STEER_HIRES: True,
    OPT_ENCODE_BATCH: 4,
    OPT_DEFAULT_RESIZE: "crop",
    OPT_CACHE_LIMIT_MB: 4096,
    OPT_UPLOAD_MAX_FILES: 500,
    OPT_UPLOAD_MAX_MB: 512,
    OPT_FOLDER_IMPORT: "operators",
    OPT_CLIP_MODEL: DEFAULT_CLIP_MODEL,
    OPT_CLIP_PRETRAINED: DEFAULT_CLIP_PRETRAINED,
    OPT_CONCEPT_DECODE_SCALE: 1.0,
    OPT_CONCEPT_TILE: 0,
    OPT_CONCEPT_CHECKPOINT: False,
}


def option(key: str) -> Any:
    """The current value of one of our settings (its default until the settings page is saved)."""
    return shared.opts.data.get(key, DEFAULTS[key])
