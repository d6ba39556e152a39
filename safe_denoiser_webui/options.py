"""The extension's settings: keys, defaults and how the glue reads them (registered by
``scripts/safe_denoiser_settings.py``)."""

from __future__ import annotations

from typing import Any

from modules import shared

SECTION = ("safe_denoiser", "Safe Denoiser")

OPT_STEER_HIRES = "safe_denoiser_steer_hires"
OPT_ENCODE_BATCH = "safe_denoiser_encode_batch"

DEFAULTS: dict[str, Any] = {
    OPT_STEER_HIRES: True,
    OPT_ENCODE_BATCH: 4,
}


def option(key: str) -> Any:
    """The current value of one of our settings (its default until the settings page is saved)."""
    return shared.opts.data.get(key, DEFAULTS[key])
