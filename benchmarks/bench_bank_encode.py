"""Overhead of the bank encoding pipeline next to the bare encoder calls it wraps.

A bank of N image files on disk (half JPEG, half PNG, photo-like content) is encoded by
``encode_images`` (decode, resize, batch, with the next batch decoded in background threads) and
written to a safetensors file atomically, as the store's latent cache does. The reference is the
same encoder called on the same batches, already decoded and resized into tensors. The target is
an overhead of at most 10%. Also printed: the pipeline's time outside the encoder, measured inside
the same run (immune to the machine's load changing between runs).

The encoder is a real convolutional VAE-encoder-shaped module (stride-2 convolutions and residual
blocks, GroupNorm + SiLU, 8x downscale to 4 latent channels, random weights: timing does not depend
on them). At 256x256 it costs ~7 GFLOPs per image, less than TAESD's encoder (~30 GFLOPs) and far
less than the SD VAE's, so the overhead ratio printed is an upper bound for a real VAE.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set): with the default spinning,
on a machine with few shared cores the same encoder call ran ~25% slower in a tight loop than with
short pauses between calls, which would make the pipeline look faster than the bare encoder.

    python benchmarks/bench_bank_encode.py [--n 256] [--size 256] [--batch-size 4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402
from safetensors.torch import save as safetensors_save  # noqa: E402

from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE, encode_images  # noqa: E402
from lib_safe_denoiser.banks.files import atomic_write_bytes  # noqa: E402
from lib_safe_denoiser.banks.images import DEFAULT_RESIZE, image_to_tensor01, load_image  # noqa: E402

T = TypeVar("T")

TARGET_OVERHEAD = 0.10
LATENT_SCALE = 0.18215
ROUNDS = 3
"""Raw and pipeline runs alternate this many times; medians of the per-round ratios are reported."""


class ResBlock(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.GroupNorm(32, channels),
            torch.nn.SiLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.GroupNorm(32, channels),
            torch.nn.SiLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SmallVAEEncoder(torch.nn.Module):
    """3 x H x W in [0, 1] -> 4 x H/8 x W/8 scaled latents (the mean half of an 8-channel moment map)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
            ResBlock(64),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1),
            ResBlock(128),
            torch.nn.Conv2d(128, 128, 3, stride=2, padding=1),
            ResBlock(128),
            torch.nn.GroupNorm(32, 128),
            torch.nn.SiLU(),
            torch.nn.Conv2d(128, 8, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)[:, :4] * LATENT_SCALE


def conv_gflops(module: torch.nn.Module, size: int) -> float:
    """Multiply-adds of every convolution for one image, times two."""
    macs = 0

    def hook(conv: torch.nn.Conv2d, _inputs: object, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = conv.kernel_size
        macs += out.numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return 2 * macs / 1e9


def make_files(folder: Path, n: int, size: int) -> list[Path]:
    """Photo-like images (smooth colour fields plus sensor-like noise), half JPEG q90, half PNG."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        fx, fy, phase = rng.uniform(1, 6, 3), rng.uniform(1, 6, 3), rng.uniform(0, 6.3, 3)
        field = np.stack([np.sin(fx[c] * x * 6.3 + fy[c] * y * 6.3 + phase[c]) for c in range(3)], -1)
        arr = (field * 90 + 128 + rng.normal(0, 6, field.shape)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr).filter(ImageFilter.GaussianBlur(0.6))
        path = folder / (f"{i:04d}.jpg" if i % 2 == 0 else f"{i:04d}.png")
        if path.suffix == ".jpg":
            img.save(path, quality=90)
        else:
            img.save(path)
        paths.append(path)
    return paths


class TimedEncoder:
    """The callable the pipeline gets (CPU float32 in and out, like the WebUI's wrapper); it adds up
    the wall time spent inside its calls."""

    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.device = device
        self.module = SmallVAEEncoder().to(device).eval()
        self.seconds = 0.0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            out = self.module(pixels.to(self.device, non_blocking=True)).float().cpu()
        self.seconds += time.perf_counter() - start
        return out


def write_cache(path: Path, latents: torch.Tensor) -> None:
    """As the store's latent cache: serialise, then write atomically (temp file, fsync, rename)."""
    atomic_write_bytes(path, safetensors_save({"latents": latents}))


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images in the bank")
    parser.add_argument("--size", type=int, default=256, help="image side on disk and encoded, pixels")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    size, batch = args.size, args.batch_size
    encoder = TimedEncoder(device)
    print(
        f"encoder: {sum(p.numel() for p in encoder.module.parameters()) / 1e6:.2f} M parameters, "
        f"{conv_gflops(encoder.module.cpu(), size):.1f} GFLOPs per {size}x{size} image; device {device}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    encoder.module.to(device)

    with tempfile.TemporaryDirectory(prefix="bench-bank-encode-") as tmp:
        folder = Path(tmp)
        paths = make_files(folder, args.n, size)
        mib = sum(p.stat().st_size for p in paths) / 2**20
        print(f"bank: {args.n} files ({mib:.1f} MiB on disk, half JPEG q90, half PNG), batch size {batch}")

        # Per-phase cost, serial and single-threaded: what the pipeline has to hide behind the encoder.
        t_decode, images = timed(lambda: [load_image(p, min_size=(size, size)) for p in paths])
        t_resize, tensors = timed(lambda: [image_to_tensor01(im, (size, size), DEFAULT_RESIZE) for im in images])
        t_batch, batches = timed(lambda: [torch.stack(tensors[i : i + batch]) for i in range(0, args.n, batch)])
        encoder(batches[0])  # warm-up: allocator, kernels, thread pools
        cache_file = folder / "cache" / "latents.safetensors"

        def raw() -> torch.Tensor:
            return torch.cat([encoder(b) for b in batches])

        rows = []  # (raw, encode_images, write, encoder time inside the pipeline)
        for _ in range(ROUNDS):  # back to back, so both see the same machine load
            t_raw, reference = timed(raw)
            encoder.seconds = 0.0
            t_encode, latents = timed(lambda: encode_images(paths, encoder, (size, size), batch_size=batch))
            in_run = encoder.seconds
            t_write, _ = timed(partial(write_cache, cache_file, latents))
            rows.append((t_raw, t_encode, t_write, in_run))
        max_diff = float((latents - reference).abs().max())

    per_image = 1e3 / args.n
    print("\nphase (serial, one thread)         wall s   ms/image")
    phases = (
        ("decode (open + load + to RGB)", t_decode),
        ("resize (crop) + to tensor", t_resize),
        ("batch (torch.stack)", t_batch),
        ("write safetensors (atomic)", min(r[2] for r in rows)),
    )
    for label, t in phases:
        print(f"  {label:<31} {t:8.3f} {t * per_image:10.2f}")

    latent_hw = f"{size // LATENT_DOWNSCALE}x{size // LATENT_DOWNSCALE}"
    print(f"\nend to end, {args.n} latents {latents.shape[1]}x{latent_hw}, wall seconds")
    print("  round  raw encoder  pipeline total  (encoder inside it)  overhead vs raw  time outside the encoder")
    for i, (t_raw, t_encode, t_write, in_run) in enumerate(rows, 1):
        total = t_encode + t_write
        print(
            f"  {i:<5} {t_raw:11.2f} {total:15.2f} {in_run:20.2f} {(total / t_raw - 1) * 100:15.1f}% "
            f"{(total / in_run - 1) * 100:23.1f}%"
        )
    best_raw = min(r[0] for r in rows)
    best_total = min(r[1] + r[2] for r in rows)
    paired = statistics.median((r[1] + r[2]) / r[0] - 1 for r in rows)
    outside = statistics.median((r[1] + r[2]) / r[3] - 1 for r in rows)
    print(f"  best: raw encoder {best_raw * per_image:.1f} ms/image, pipeline {best_total * per_image:.1f} ms/image")

    def verdict(value: float) -> str:
        return "meets" if value <= TARGET_OVERHEAD else "MISSES"

    print(f"\noverhead (target <= {TARGET_OVERHEAD:.0%}), medians over {ROUNDS} rounds:")
    print(f"  vs the raw encoder on pre-made tensors: {paired * 100:+.1f}% ({verdict(paired)})")
    print(f"  time outside the encoder, same run:     {outside * 100:+.1f}% ({verdict(outside)})")
    serial = t_decode + t_resize + t_batch
    print(
        f"serial decode+resize+batch work: {serial / best_raw * 100:.1f}% of the raw encoder time "
        f"(what a pipeline without background decoding would add); max |latent diff| vs raw {max_diff:.2e}"
    )


if __name__ == "__main__":
    main()
