"""Every constant of the tiny digits checkpoint: sizes, prompts, seeds, training lengths, where it is cached."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
YAML_TEMPLATE = HERE / "tiny-digits-sd15.yaml"
CACHE_DIR = Path(os.environ.get("SD_SAFE_DENOISER_CACHE", Path.home() / ".cache" / "sd-webui-safe-denoiser"))
CHECKPOINT_NAME = "tiny-digits-sd15.safetensors"
CHECKPOINT = CACHE_DIR / CHECKPOINT_NAME
V_CHECKPOINT_NAME = "tiny-digits-sd15-v.safetensors"
"""The v-prediction variant (``train --prediction v``): the same data, VAE and UNet, trained to predict v."""
PREDICTIONS = {"eps": CHECKPOINT_NAME, "v": V_CHECKPOINT_NAME}

IMAGE_SIZE = 64
"""Pixels per side: the 8x8 digits upscaled 8x, so the 8x down-sampling VAE gives 4x8x8 latents."""
LATENT_SCALE = 0.18215
"""SD 1.x's scale factor, kept in the yaml: the VAE's latent statistics are folded into its weights instead."""

GENERIC_PROMPT = "a handwritten digit"
DIGIT_PROMPT = "a handwritten digit {digit}"
EMPTY_PROMPT = ""
P_GENERIC = 0.2
"""Prompt dropout: this share of training images gets the generic prompt, so it samples all ten digits."""
P_EMPTY = 0.1
"""... and this share the empty prompt (the WebUI's unconditional row for an empty negative prompt)."""
CONTEXT_TOKENS = 77

SEED = 0
THREADS = 1
"""One thread: on a shared 2-core machine two threads ran the UNet step 10x slower (OpenMP waits), not faster."""
VAE_STEPS = 200
VAE_BATCH = 8
VAE_LR = 2e-3
VAE_KL_WEIGHT = 1e-6
UNET_STEPS = 800
UNET_BATCH = 64
UNET_LR = 1e-3
LOG_EVERY = 25
