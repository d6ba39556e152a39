"""What the extension needs to know of the loaded model: can it be steered, which VAE encodes
its banks, and an encoder callable for the bank store."""

from __future__ import annotations

import os
from typing import Any

import torch
from modules import sd_samplers_common


def model_problem(model: Any) -> str | None:
    """Why this model cannot be steered, or None."""
    if getattr(model, "is_sd3", False):
        return "SD3 models (16-channel latents) are not supported yet; disable the safe denoiser for them."
    if getattr(model, "cond_stage_key", None) == "edit":
        return "instruct-pix2pix (edit) models are not supported; disable the safe denoiser for them."
    if getattr(model, "alphas_cumprod", None) is None:
        return "this model has no DDPM noise schedule (alphas_cumprod) to map the window onto."
    return None


def vae_id(model: Any) -> str:
    """The identity the bank latents are cached under: model family and the VAE in use."""
    from modules import sd_vae

    family = "sdxl" if getattr(model, "is_sdxl", False) else "sd2" if getattr(model, "is_sd2", False) else "sd1"
    vae_file = getattr(sd_vae, "loaded_vae_file", None)
    if vae_file:
        return f"{family}-vae-{os.path.basename(vae_file)}"
    info = getattr(model, "sd_checkpoint_info", None)
    ident = getattr(model, "sd_model_hash", None) or getattr(info, "model_name", None) or "unknown"
    return f"{family}-ckpt-{ident}"


def encoder_for(model: Any):
    """Pixels [n, 3, H, W] in [0, 1] -> scaled latents, with the full VAE of ``model`` on its device."""

    def encode(img01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sd_samplers_common.images_tensor_to_samples(img01, 0, model).float().cpu()

    return encode
