"""Side-by-side sample grids as a PNG: the picture a person looks at to judge the correction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SCALE = 5
GAP = 2
MARGIN = 12
TITLE_HEIGHT = 22
FLAG = (220, 40, 40)
"""Frame colour of samples the classifier reads as the negated digit."""


def _panel(images: torch.Tensor, flagged: torch.Tensor, columns: int) -> Image.Image:
    rows = -(-images.shape[0] // columns)
    cell = 8 * SCALE + 2 * GAP
    panel = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    pixels = ((1.0 - images.clamp(-1, 1)) * 127.5).round().to(torch.uint8).numpy()  # ink dark on white
    for i, (img, flag) in enumerate(zip(pixels, flagged.tolist(), strict=True)):
        tile = Image.fromarray(np.repeat(np.repeat(img[0], SCALE, 0), SCALE, 1), mode="L").convert("RGB")
        framed = Image.new("RGB", (cell, cell), FLAG if flag else (255, 255, 255))
        framed.paste(tile, (GAP, GAP))
        panel.paste(framed, ((i % columns) * cell, (i // columns) * cell))
    return panel


def save_grid(path: Path, panels: Sequence[tuple[str, torch.Tensor, torch.Tensor]], columns: int = 10) -> None:
    """Write panels (title, images [N, 1, 8, 8] in [-1, 1], flagged [N] bool) left to right."""
    tiles = [_panel(images, flagged, columns) for _, images, flagged in panels]
    width = sum(t.width for t in tiles) + MARGIN * (len(tiles) + 1)
    height = max(t.height for t in tiles) + TITLE_HEIGHT + 2 * MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = MARGIN
    for (title, _, _), tile in zip(panels, tiles, strict=True):
        draw.text((x, MARGIN), title, fill=(0, 0, 0))
        canvas.paste(tile, (x, MARGIN + TITLE_HEIGHT))
        x += tile.width + MARGIN
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
