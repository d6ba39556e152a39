"""Decoding latents with gradient for the judge, within a memory budget.

Backpropagating through the VAE decoder keeps its activations: about 6 GB in fp32 for one
512x512 image with SD's decoder, four times that at 1024x1024. ``MemoryOptions`` trades them for
time or fidelity; ``decode_for_judge`` applies them around any ``decode(latents) -> images`` callable.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lib_safe_denoiser.concepts.constants import DEFAULT_TILE_OVERLAP, MIN_TILE_SIZE
from lib_safe_denoiser.concepts.parsing import ConceptError

Decode = Callable[[torch.Tensor], torch.Tensor]
"""``decode(latents [B, C, h, w]) -> images [B, 3, H, W] in [-1, 1]``, differentiable (not under no_grad)."""

BLOCK_CLASS_SUFFIXES = ("ResnetBlock", "AttnBlock", "Upsample")
"""Class-name endings of the SD/SDXL VAE decoder's blocks (ldm and sgm share them): the units
``decoder_blocks`` finds for per-block gradient checkpointing."""


@dataclass(frozen=True)
class MemoryOptions:
    """How the decode-with-gradient is made to fit; the defaults keep everything (fastest, exact).

    decode_scale: decode the latents resized by this factor (0 < s <= 1). Decoder time and memory
        shrink by about s^2; CLIP only looks at 224x224, so 0.5 of a 512x512 image (256 px)
        loses little of what it judges. The VAE sees resampled latents, so the judged image is a
        softer rendering of the same picture, and the gradient reaching x0 is smooth (it passes
        back through the resampling).
    tile_size: decode in tiles of this many latent pixels (0: off), each recomputed in the
        backward pass, so only one tile's activations are alive at a time: memory of one tile,
        about one extra decode's time. Tiles are blended linearly over ``tile_overlap``; the
        decoder's group norms see one tile at a time, so the judged image can differ slightly
        from a whole decode (larger tiles: closer).
    tile_overlap: latent pixels neighbouring tiles share (must be below ``tile_size``).
    checkpoint: recompute the decoder's activations in the backward pass instead of keeping
        them: about one extra decode forward. Given the decoder's blocks (``decoder_blocks``),
        only one block's activations are kept at a time (the large saving); without them the
        whole decode is one checkpoint, which only spares holding them while CLIP runs.
    """

    decode_scale: float = 1.0
    tile_size: int = 0
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    checkpoint: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.decode_scale, bool) or not isinstance(self.decode_scale, (int, float)) \
                or not 0.0 < self.decode_scale <= 1.0:
            raise ConceptError(f"decode_scale must lie in (0, 1], got {self.decode_scale!r}")
        for name in ("tile_size", "tile_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConceptError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.tile_size and self.tile_size < MIN_TILE_SIZE:
            raise ConceptError(f"tile_size must be 0 (off) or >= {MIN_TILE_SIZE} latent pixels, got {self.tile_size}")
        if self.tile_size and self.tile_overlap >= self.tile_size:
            raise ConceptError(f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size ({self.tile_size})")


def decoder_blocks(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of a VAE decoder to checkpoint one by one (outermost matches, none nested; blocks
    without weights, such as torch's own ``nn.Upsample``, keep nothing worth recomputing)."""
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in decoder.modules():
        if id(module) in inside:
            continue
        if type(module).__name__.endswith(BLOCK_CLASS_SUFFIXES) and any(True for _ in module.parameters()):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def _checkpointed_forward(forward: Callable[..., torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)  # a no-grad caller (a live preview in another thread) runs as usual


@contextlib.contextmanager
def checkpointed(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Within the block, each module's forward is gradient-checkpointed (only when grad is enabled)."""
    patched = []
    try:
        for module in modules:
            if "forward" in vars(module):
                continue  # already wrapped (a nested call) or patched by someone else: leave it
            module.forward = functools.partial(_checkpointed_forward, module.forward)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    return [*range(0, size - tile, stride), size - tile]


def _ramp(length: int, overlap: int, lead: bool, trail: bool) -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over ``overlap`` at shared edges, 1 elsewhere."""
    w = torch.ones(length)
    if overlap > 0:
        rise = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if lead:
            w[:overlap] = rise
        if trail:
            w[-overlap:] = rise.flip(0)
    return w


def tiled_decode(decode: Decode, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """``decode(z)`` tile by tile, each tile checkpointed, blended linearly over the overlaps."""
    h, w = z.shape[-2:]
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    out: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    factor = 0
    for y in ys:
        for x in xs:
            part = z[..., y:y + tile, x:x + tile]
            img = checkpoint(decode, part, use_reentrant=False) if torch.is_grad_enabled() else decode(part)
            if out is None:
                factor = img.shape[-2] // part.shape[-2]
                out = img.new_zeros(*img.shape[:-2], h * factor, w * factor)
                weight = torch.zeros(h * factor, w * factor, device=img.device, dtype=torch.float32)
            th, tw = img.shape[-2:]
            ramp_y = _ramp(th, overlap * factor, y > 0, y + tile < h)
            ramp_x = _ramp(tw, overlap * factor, x > 0, x + tile < w)
            mask = torch.outer(ramp_y, ramp_x).to(img.device)
            ry, rx = y * factor, x * factor
            out[..., ry:ry + th, rx:rx + tw] += img * mask.to(img.dtype)
            weight[ry:ry + th, rx:rx + tw] += mask
    assert out is not None and weight is not None
    return out / weight.to(out.dtype)


def decode_for_judge(decode: Decode, z: torch.Tensor, options: MemoryOptions,
                     blocks: Sequence[torch.nn.Module] = ()) -> torch.Tensor:
    """Images in [-1, 1] decoded from ``z`` with the gradient path kept, as ``options`` allow.

    ``blocks`` are the decoder's modules to checkpoint one by one when ``options.checkpoint``
    (see ``decoder_blocks``); without them the whole decode is checkpointed.
    """
    if options.decode_scale < 1:
        h, w = z.shape[-2:]
        size = (max(1, math.floor(h * options.decode_scale + 0.5)), max(1, math.floor(w * options.decode_scale + 0.5)))
        z = F.interpolate(z, size=size, mode="bilinear", align_corners=False, antialias=True)
    per_block = options.checkpoint and bool(blocks)
    with checkpointed(blocks) if per_block else contextlib.nullcontext():
        if options.tile_size and max(z.shape[-2:]) > options.tile_size:
            return tiled_decode(decode, z, options.tile_size, options.tile_overlap)
        if options.checkpoint and not per_block and torch.is_grad_enabled():
            return checkpoint(decode, z, use_reentrant=False)
        return decode(z)
