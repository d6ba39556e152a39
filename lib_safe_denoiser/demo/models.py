"""The two small networks of the demo: an EDM-preconditioned MLP denoiser and a digit classifier.

The denoiser follows Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
Generative Models": the network F only ever sees unit-variance inputs and predicts a
unit-variance target, and D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) is the x0
prediction in the k-diffusion parametrisation x = x0 + sigma eps that the safe denoiser uses.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PIXELS = 64


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of EDM's preconditioning, each shaped like ``sigma``."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


class FourierEmbedding(nn.Module):
    """Sinusoids of c_noise at fixed log-spaced frequencies: a smooth code for the noise level."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), dim // 2)), persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.unsqueeze(1) * self.freqs.unsqueeze(0)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block whose hidden layer is shifted by the noise embedding."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.outer(nn.functional.silu(self.inner(self.norm(h)) + emb))


class EDMDenoiser(nn.Module):
    """Unconditional x0 predictor for 8x8 digits: ``forward(x [B,1,8,8], sigma [B] or float) -> x0``."""

    def __init__(self, sigma_data: float, width: int = 256, depth: int = 4, emb_dim: int = 64) -> None:
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.hparams = {"sigma_data": self.sigma_data, "width": width, "depth": depth, "emb_dim": emb_dim}
        self.embed = nn.Sequential(FourierEmbedding(emb_dim), nn.Linear(emb_dim, width), nn.SiLU(),
                                   nn.Linear(width, width), nn.SiLU())
        self.emb_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.inp = nn.Linear(PIXELS, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, PIXELS)

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """F: the network itself on flattened, preconditioned inputs [B, 64]."""
        emb = self.embed(c_noise)
        h = self.inp(x_in)
        for block, proj in zip(self.blocks, self.emb_proj, strict=True):
            h = block(h, proj(emb))
        return self.out(nn.functional.silu(self.out_norm(h)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        flat = x.reshape(x.shape[0], PIXELS)
        sig = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).reshape(-1).expand(flat.shape[0])
        c_skip, c_out, c_in, c_noise = (c.unsqueeze(1) for c in edm_scalings(sig, self.sigma_data))
        x0 = c_skip * flat + c_out * self.raw(c_in * flat, c_noise.squeeze(1))
        return x0.reshape(x.shape)


class DigitClassifier(nn.Module):
    """A tiny CNN; ``features`` (the penultimate layer) feeds the Frechet distance."""

    def __init__(self, channels: int = 32, feature_dim: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        self.hparams = {"channels": channels, "feature_dim": feature_dim, "n_classes": n_classes}
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
        )
        self.feature = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * c, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
