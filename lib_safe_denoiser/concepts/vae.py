"""A differentiable decode from a WebUI model object, by duck typing (no WebUI import).

In WebUI v1.10.1 ``sd_model.decode_first_stage`` runs under ``torch.no_grad`` (ldm, sgm) and is
wrapped by the WebUI's own hijacks, so the concept steering calls the VAE one level down:
``first_stage_model.decode`` on latents brought to the VAE's scale. That is the same computation
for SD 1.x/2.x (ldm ``LatentDiffusion``) and SDXL (sgm ``DiffusionEngine``): ``z / scale_factor``;
SD3 keeps a ``latent_format`` with a shift. ``--lowvram`` wraps ``first_stage_model.decode`` to
move the VAE to the GPU first, so going through it keeps that working.
"""

from __future__ import annotations

from typing import Any

import torch

from lib_safe_denoiser.concepts.decoding import Decode, decoder_blocks


def differentiable_decode(sd_model: Any, dtype: torch.dtype | None = None) -> Decode:
    """``decode(x0) -> images in [-1, 1]`` (float32) through ``sd_model``'s VAE, gradient kept.

    ``dtype`` is the VAE's compute dtype (the WebUI's ``devices.dtype_vae``); by default its weights'.
    """
    vae = sd_model.first_stage_model
    latent_format = getattr(sd_model, "latent_format", None)
    vae_dtype = dtype or next(vae.parameters()).dtype
    if latent_format is not None:
        to_vae = latent_format.process_out
    else:
        scale = float(sd_model.scale_factor)

        def to_vae(z: torch.Tensor) -> torch.Tensor:
            return z / scale

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(to_vae(z).to(vae_dtype)).float()

    return decode


def vae_blocks(sd_model: Any) -> list[torch.nn.Module]:
    """The VAE decoder's blocks for per-block gradient checkpointing (empty if it has no ``decoder``)."""
    decoder = getattr(sd_model.first_stage_model, "decoder", None)
    return decoder_blocks(decoder) if isinstance(decoder, torch.nn.Module) else []
