"""Shared by the store's tests and its benchmark: real images on disk, a tiny real encoder, and the
worker functions child processes run (they must be importable, for the "spawn" start method)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_safe_denoiser.banks.files import sha256_file
from lib_safe_denoiser.banks.store import BankStore

BASE_IMAGES = 3
"""The first images of the churned bank: ``churn_forever`` never removes them."""


class CountingEncoder(torch.nn.Module):
    """A tiny real encoder (8x average pooling, fixed 1x1 conv to 4 channels) that counts its work."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(8)
        self.proj = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1.0, 1.0, 12).reshape(4, 3, 1, 1))
            self.proj.bias.fill_(0.1)
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.proj(self.pool(x)) * 0.18215


def noise_image(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """Random RGB pixels: every seed gives a picture far (in perceptual hash) from every other."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 32), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(seed, size).save(path, format=fmt)
    return path


def make_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [write_image(folder / f"img{start + i:03d}.png", start + i) for i in range(n)]


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "locks") if root.exists() else []


def bank_is_whole(store: BankStore, name: str) -> bool:
    """The bank reads, and every image it lists is on disk with the bytes its hash names."""
    paths = store.image_paths(name)
    entries = store.image_entries(name)
    return all(sha256_file(p) == e["sha256"] for p, e in zip(paths, entries, strict=True))


# ---- child processes ---------------------------------------------------------------------------
def append_rounds(root: str, bank: str, folder: str, rounds: int, per_round: int, barrier, results) -> None:
    """Add ``per_round`` of this worker's images to ``bank`` per round, with a gc (no grace) after each
    add, as a second WebUI process would; puts (images added, rounds done) on ``results``."""
    store = BankStore(root)
    files = sorted(Path(folder).iterdir())
    barrier.wait()  # both workers begin together, after their imports
    added = 0
    for r in range(rounds):
        batch = files[r * per_round : (r + 1) * per_round]
        added += len(store.add_images(bank, batch).added)
        store.gc(grace_s=0)
    results.put((added, rounds))


def churn_forever(root: str, bank: str, folder: str, ready_path: str, seed: int) -> None:
    """Write to ``bank`` in every way the store can, forever, until killed; touches ``ready_path`` first."""
    rng = random.Random(seed)
    store = BankStore(root)
    extra = sorted(Path(folder).iterdir())
    archive = Path(root).parent / f"churn-{seed}.zip"
    Path(ready_path).touch()
    while True:
        op = rng.randrange(6)
        batch = rng.sample(extra, 4)
        if op == 0:
            store.add_images(bank, batch)
        elif op == 1:
            base = {e["sha256"] for e in store.image_entries(bank)[:BASE_IMAGES]}
            removable = [e["sha256"] for e in store.image_entries(bank) if e["sha256"] not in base]
            if removable:
                store.remove_images(bank, removable[: rng.randrange(1, len(removable) + 1)])
        elif op == 2:
            store.update(bank, description=f"round {rng.random()}", tags=[f"t{rng.randrange(9)}"])
        elif op == 3:
            store.rename(bank, bank + "-tmp")
            store.rename(bank + "-tmp", bank)
        elif op == 4:
            store.export_bank(bank, archive, latents="none")
            store.import_bank(archive, name=bank, overwrite=True)
        else:
            store.gc(grace_s=0)
        os.utime(ready_path)
