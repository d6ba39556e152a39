"""Image -> latent pipeline around an encoder callable.

The encoder is whatever turns a float image batch into latents: in the WebUI it wraps
``sd_samplers_common.images_tensor_to_samples`` (images [n, 3, H, W] in [0, 1], result already
scaled by the VAE's factor), in tests a tiny torch module. This module knows nothing of devices:
it hands the encoder float32 CPU tensors and brings the result back as float32 CPU tensors,
so the caller decides where the VAE runs (and which lock it holds while it does).

While the encoder works on one batch, background threads decode and resize the next one, so on a
GPU the VAE never waits for JPEG decoding (see benchmarks/bench_bank_encode.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from lib_safe_denoiser.banks.images import (
    DEFAULT_RESIZE,
    ImageSource,
    check_hw,
    image_to_tensor01,
    load_image,
    validate_resize,
)
from lib_safe_denoiser.errors import BankError, EncodeCancelled

Encoder = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]

LATENT_DOWNSCALE = 8
"""Pixel size of one latent cell for every VAE this extension supports (SD 1.x/2.x/XL)."""

DECODE_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
"""Threads decoding the next batch (Pillow releases the GIL while decoding and resizing). At most
half the cores: a VAE running on the CPU needs the rest, and oversubscribed cores slow its
OpenMP kernels down more than decoding costs."""


def encode_images(
    sources: Sequence[ImageSource],
    encoder: Encoder,
    pixel_hw: tuple[int, int],
    *,
    resize: str = DEFAULT_RESIZE,
    batch_size: int = 4,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> torch.Tensor:
    """Encode ``sources`` in batches to latents [N, C, H/8, W/8], float32 on the CPU.

    Memory holds at most two batches of pixels (the one being encoded, the one being decoded),
    whatever N is. ``progress(done, total)`` is called after each batch; nothing is printed here,
    the caller owns the display. ``cancel()`` is asked before each batch: when it returns true,
    ``EncodeCancelled`` is raised and nothing is returned. A bad image raises ``BankError`` naming it.
    """
    height, width = check_hw(pixel_hw, "pixel_hw")
    if height % LATENT_DOWNSCALE or width % LATENT_DOWNSCALE:
        raise BankError(f"pixel size {height}x{width} must be a multiple of {LATENT_DOWNSCALE} on both sides")
    if batch_size < 1:
        raise BankError(f"batch_size must be >= 1, got {batch_size}")
    validate_resize(resize)
    total = len(sources)
    if total == 0:
        raise BankError("no images to encode")
    latent_hw = (height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
    starts = range(0, total, batch_size)

    def prepare(source: ImageSource) -> torch.Tensor:
        return image_to_tensor01(load_image(source, min_size=(width, height)), (height, width), resize)

    out: list[torch.Tensor] = []
    channels: int | None = None
    with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="safe-denoiser-decode") as pool:

        def submit(start: int) -> list[Future[torch.Tensor]]:
            return [pool.submit(prepare, s) for s in sources[start : start + batch_size]]

        pending = submit(0)
        try:
            for k, start in enumerate(starts):
                if cancel is not None and cancel():
                    raise EncodeCancelled(f"encoding cancelled after {start} of {total} images; nothing was saved")
                pixels = torch.stack([f.result() for f in pending])
                pending = submit(starts[k + 1]) if k + 1 < len(starts) else []
                with torch.no_grad():
                    latents = encoder(pixels)
                latents = check_latents(latents, pixels.shape[0], latent_hw, channels=channels)
                channels = latents.shape[1]
                out.append(latents)
                if progress is not None:
                    progress(start + pixels.shape[0], total)
        finally:
            for f in pending:  # on an error or a cancel, do not decode what nobody will encode
                f.cancel()
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
