"""The sklearn digits at 64x64 RGB for the tiny checkpoint, and 64x64 pictures read back as digits.

Upscaling is bilinear and reading back averages 8x8 blocks, so a real digit survives the round trip close
to its original 8x8 self and the demo's classifier (trained on the 8x8 digits) reads the decoded pictures.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lib_safe_denoiser.demo.data import Digits
from lib_safe_denoiser.demo.metrics import classify
from lib_safe_denoiser.demo.weights import load_classifier
from tools.tiny_sd.config import IMAGE_SIZE


def upscale(images8: torch.Tensor) -> torch.Tensor:
    """[N, 1, 8, 8] in [-1, 1] -> [N, 3, 64, 64] in [-1, 1] (grey, bright ink on black, as the digits are)."""
    big = F.interpolate(images8, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return big.clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def downscale(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] (H, W multiples of 8) -> [N, 1, 8, 8]: the grey mean of each block."""
    grey = images.mean(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(grey, (8, 8))


def to_png(image: torch.Tensor) -> bytes:
    """One [3, H, W] image in [-1, 1] as PNG bytes."""
    arr = ((image.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def from_picture(data: bytes | Image.Image) -> torch.Tensor:
    """A picture (PNG bytes or a PIL image, any size divisible by 8) -> [3, H, W] in [-1, 1]."""
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


class DigitReader:
    """Reads pictures as digits: the demo's 8x8 classifier on their 8x8 block means."""

    def __init__(self) -> None:
        self.classifier = load_classifier().eval()

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """Labels [N] of images [N, 3, H, W] in [-1, 1]."""
        labels, _ = classify(self.classifier, downscale(images))
        return labels

    def read_pictures(self, pictures: list[bytes | Image.Image]) -> torch.Tensor:
        return self.read(torch.stack([from_picture(p) for p in pictures]))

    def accuracy(self, digits: Digits) -> float:
        """Share of real digits read right after the 64x64 round trip (upscale, PNG, downscale)."""
        pictures = [to_png(img) for img in upscale(digits.images)]
        return float((self.read_pictures(pictures) == digits.labels).float().mean())
