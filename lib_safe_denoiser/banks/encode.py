"""Image -> latent pipeline around an encoder callable.

The encoder is whatever turns a float image batch into latents: in the WebUI it wraps
``sd_samplers_common.images_tensor_to_samples`` (images [n, 3, H, W] in [0, 1], result already
scaled by the VAE's factor), in tests a tiny torch module. This module knows nothing of devices:
it hands the encoder float32 CPU tensors and brings the result back as float32 CPU tensors,
so the caller decides where the VAE runs (and which lock it holds while it does).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_safe_denoiser.errors import BankError

ImageSource = str | os.PathLike | bytes | Image.Image
Encoder = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]

LATENT_DOWNSCALE = 8
"""Pixel size of one latent cell for every VAE this extension supports (SD 1.x/2.x/XL)."""


def describe_source(source: ImageSource) -> str:
    """A short human name for an image source, for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of image data>"
    if isinstance(source, Image.Image):
        return f"<in-memory {source.mode} image {source.width}x{source.height}>"
    return str(source)


def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode ``source`` fully into an RGB image, or raise ``BankError`` naming it (or ``name``).

    ``.load()`` forces a full decode so truncated files fail here, not halfway through encoding.
    EXIF orientation is applied (phones store rotated pixels); transparency is composited on
    white, because dropping alpha would reveal whatever colour the transparent pixels hold.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        name = name or describe_source(source)
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                img = Image.open(io.BytesIO(bytes(source)))
            else:
                img = Image.open(Path(source))
            img.load()
        except FileNotFoundError as e:
            raise BankError(f"image not found: {name}") from e
        except (UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise BankError(f"not a readable image: {name} ({e}); remove it or convert it to PNG/JPEG") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BankError(f"corrupt or truncated image: {name} ({e}); remove it or re-export it") from e
    try:
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, ValueError) as e:
        raise BankError(f"cannot convert image to RGB: {name or describe_source(source)} ({e})") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_to_tensor01(img: Image.Image, size_hw: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1]: scale to cover ``size_hw``, then center-crop.

    Cover-and-crop keeps the aspect ratio, so bank images are never stretched; the lost margins
    are what a generation of that shape would not show either.
    """
    height, width = _check_hw(size_hw, "size_hw")
    img = _to_rgb(img)
    if img.size != (width, height):
        img = ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def encode_images(
    sources: Sequence[ImageSource],
    encoder: Encoder,
    pixel_hw: tuple[int, int],
    *,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Encode ``sources`` in batches to latents [N, C, H/8, W/8], float32 on the CPU.

    Images are decoded one batch at a time, so memory holds one batch of pixels whatever N is.
    ``progress(done, total)`` is called after each batch; nothing is printed here, the caller
    owns the display (tqdm, WebUI progress bar, nothing).
    """
    height, width = _check_hw(pixel_hw, "pixel_hw")
    if height % LATENT_DOWNSCALE or width % LATENT_DOWNSCALE:
        raise BankError(f"pixel size {height}x{width} must be a multiple of {LATENT_DOWNSCALE} on both sides")
    if batch_size < 1:
        raise BankError(f"batch_size must be >= 1, got {batch_size}")
    total = len(sources)
    if total == 0:
        raise BankError("no images to encode")
    latent_hw = (height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
    out: list[torch.Tensor] = []
    channels: int | None = None
    for start in range(0, total, batch_size):
        chunk = sources[start : start + batch_size]
        pixels = torch.stack([image_to_tensor01(load_image(s), (height, width)) for s in chunk])
        with torch.no_grad():
            latents = encoder(pixels)
        latents = check_latents(latents, len(chunk), latent_hw, channels=channels)
        channels = latents.shape[1]
        out.append(latents)
        if progress is not None:
            progress(min(start + len(chunk), total), total)
    return torch.cat(out)


def check_latents(
    latents: object, n: int, latent_hw: tuple[int, int], *, channels: int | None = None
) -> torch.Tensor:
    """Return ``latents`` as float32 CPU [n, C, h, w], or raise ``BankError`` saying what is wrong.

    An encoder that returns the wrong shape or NaNs (a fp16 VAE overflowing, a wrong model) must
    fail loudly here: a bad bank silently steers every generation.
    """
    if not isinstance(latents, torch.Tensor):
        raise BankError(f"the encoder returned {type(latents).__name__}, expected a torch.Tensor")
    h, w = latent_hw
    shape = tuple(latents.shape)
    if latents.ndim != 4 or shape[0] != n or shape[2:] != (h, w) or shape[1] < 1:
        raise BankError(f"the encoder returned latents of shape {list(shape)}, expected [{n}, C, {h}, {w}]")
    if channels is not None and shape[1] != channels:
        raise BankError(f"the encoder returned {shape[1]} latent channels, {channels} for earlier images")
    latents = latents.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(latents).all():
        raise BankError(
            "the encoder returned NaN or infinite latents; if the VAE runs in half precision, "
            "try --no-half-vae or a fixed VAE (e.g. sdxl-vae-fp16-fix)"
        )
    return latents.contiguous()


def _check_hw(size_hw: tuple[int, int], what: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size_hw)
    except (TypeError, ValueError) as e:
        raise BankError(f"{what} must be (height, width), got {size_hw!r}") from e
    if height < 1 or width < 1:
        raise BankError(f"{what} must be positive, got {height}x{width}")
    return height, width
