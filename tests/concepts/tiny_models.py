"""A tiny random-weight open_clip judge and a small conv decoder, for tests of the concept code.

``import open_clip`` needs torchvision; ``tests.torchvision_ops`` makes the registry's CUDA build
importable beside CPU torch before anything imports it (see there why, and why that is honest).
Importing this module does that, so any test (the glue's too) can use a real CLIP model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.torchvision_ops import ensure_torchvision_importable

ensure_torchvision_importable()

import open_clip  # noqa: E402  (after the operator schemas are declared)

from lib_safe_denoiser.concepts.clip_judge import ClipJudge, TextEmbeddingCache, load_clip  # noqa: E402

TINY_CLIP = "tiny_clip"
"""A 2-layer, 64-wide CLIP (patch 8, 32x32 images, 32-d embeddings), registered from tiny_clip.json."""
open_clip.add_model_config(Path(__file__).with_name("tiny_clip.json"))

LATENT_CHANNELS = 4
"""Like SD's VAE: 4 latent channels, 8x fewer pixels per side than the image."""


class TinyResnetBlock(torch.nn.Module):
    """Named like SD's decoder blocks, so ``decoder_blocks`` finds it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(4, channels)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(torch.nn.functional.silu(self.norm(x)))


class TinyDecoder(torch.nn.Module):
    """latents [B, 4, h, w] -> images [B, 3, 8h, 8w]: convolutions, a residual block, three 2x upsamplings."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(LATENT_CHANNELS, width, 3, padding=1), TinyResnetBlock(width)]
        for _ in range(3):
            layers += [torch.nn.Upsample(scale_factor=2, mode="nearest"), torch.nn.Conv2d(width, width, 3, padding=1),
                       torch.nn.SiLU()]
        layers.append(torch.nn.Conv2d(width, 3, 3, padding=1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z))


def tiny_judge(seed: int = 0) -> ClipJudge:
    """A random-weight tiny CLIP judge (same seed, same weights) with its own text cache."""
    torch.manual_seed(seed)
    return load_clip(TINY_CLIP, "", text_cache=TextEmbeddingCache())


def tiny_decoder(seed: int = 1) -> TinyDecoder:
    torch.manual_seed(seed)
    return TinyDecoder().eval().requires_grad_(False)
