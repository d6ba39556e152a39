"""A random-weight VAE decoder with the layout of Stable Diffusion's (SD 1.x, 2.x and SDXL share it).

The same modules, channel widths and resolutions as ``ldm.modules.diffusionmodules.model.Decoder``
with SD's first-stage config (ch 128, ch_mult 1-2-4-4, 2 residual blocks per level, z_channels 4,
attention in the middle only), plus the ``post_quant_conv`` that ``AutoencoderKL.decode`` runs
first: 49.5 M parameters, like the real one. Timing and memory do not depend on the weights, so
this stands in for the WebUI's VAE in the concept-steering benchmark without downloading it.
Class names match ldm's (ResnetBlock, AttnBlock, Upsample), so ``decoder_blocks`` finds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CH = 128
CH_MULT = (1, 2, 4, 4)
NUM_RES_BLOCKS = 2
Z_CHANNELS = 4
GROUPS = 32


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SDDecoder(nn.Module):
    """latents [B, 4, h, w] (already divided by the scale factor) -> images [B, 3, 8h, 8w]."""

    def __init__(self) -> None:
        super().__init__()
        top = CH * CH_MULT[-1]
        self.post_quant_conv = nn.Conv2d(Z_CHANNELS, Z_CHANNELS, 1)
        self.conv_in = nn.Conv2d(Z_CHANNELS, top, 3, padding=1)
        self.mid = nn.Sequential(ResnetBlock(top, top), AttnBlock(top), ResnetBlock(top, top))
        levels: list[nn.Module] = []
        cin = top
        for i in reversed(range(len(CH_MULT))):
            cout = CH * CH_MULT[i]
            blocks: list[nn.Module] = []
            for _ in range(NUM_RES_BLOCKS + 1):
                blocks.append(ResnetBlock(cin, cout))
                cin = cout
            if i > 0:
                blocks.append(Upsample(cout))
            levels.append(nn.Sequential(*blocks))
        self.up = nn.Sequential(*levels)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(self.post_quant_conv(z))))
        return self.conv_out(F.silu(self.norm_out(h)))
