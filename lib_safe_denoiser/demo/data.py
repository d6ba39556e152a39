"""The sklearn digits (8x8, 10 classes) scaled to [-1, 1], and the fixed train / held-out split.

The split is stored as index lists next to the weights (``assets/split.json``), so every
consumer sees the same held-out images whatever the sklearn version; ``make_split`` is only
called by the training script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).resolve().parent / "assets"
SPLIT_FILE = ASSETS / "split.json"
SPLIT_SEED = 0
HELDOUT_FRACTION = 1 / 3
"""A third is held out so that every class has about 60 held-out images: a held-out negation
set can then be as large as the default train one (60)."""

IMAGE_SHAPE = (1, 8, 8)
N_CLASSES = 10


@dataclass(frozen=True)
class Digits:
    """Images [N, 1, 8, 8] in [-1, 1] (float32) and their labels [N] (int64)."""

    images: torch.Tensor
    labels: torch.Tensor

    def of_class(self, digit: int) -> torch.Tensor:
        return self.images[self.labels == digit]

    def without_class(self, digit: int) -> torch.Tensor:
        return self.images[self.labels != digit]


def load_all() -> Digits:
    """All 1797 digits; pixels 0..16 mapped linearly to [-1, 1]."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.data.astype(np.float32) / 8.0 - 1.0).reshape(-1, *IMAGE_SHAPE)
    return Digits(images, torch.from_numpy(raw.target.astype(np.int64)))


def make_split(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """A stratified split, as sorted index lists into ``load_all()``."""
    from sklearn.model_selection import train_test_split

    train, heldout = train_test_split(np.arange(len(labels)), test_size=HELDOUT_FRACTION, stratify=labels,
                                      random_state=seed)
    return {"train": sorted(int(i) for i in train), "heldout": sorted(int(i) for i in heldout)}


def save_split(split: dict[str, list[int]], path: Path = SPLIT_FILE) -> None:
    payload = {"seed": SPLIT_SEED, "heldout_fraction": HELDOUT_FRACTION, **split}
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")


def load_split(path: Path = SPLIT_FILE) -> tuple[Digits, Digits]:
    """The (train, held-out) digits of the shipped split."""
    split = json.loads(path.read_text())
    every = load_all()
    parts = []
    for name in ("train", "heldout"):
        idx = torch.tensor(split[name], dtype=torch.long)
        parts.append(Digits(every.images[idx], every.labels[idx]))
    return parts[0], parts[1]
