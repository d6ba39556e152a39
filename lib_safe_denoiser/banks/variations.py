"""Model-made variations of a bank's images, made through a running WebUI's img2img.

A bank of a few dozen images is smaller than the concept it stands for: the correction then pushes
away from those images more than from the concept around them (on the digits benchmark, a bank of 30
images lets through the harder digits' neighbours of the bank). The model itself knows the concept's
neighbourhood: img2img of each bank image at a moderate denoising strength draws nearby images of the
same concept, and a bank of those variations, selected beside the original, covers more of it.
Like ``bank sample`` this runs as an HTTP client of the WebUI (``webui_http``), with the caller's login.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from lib_safe_denoiser.banks.webui_http import (
    IMG2IMG_PATH,
    BankWriter,
    Generation,
    WebUIHttp,
    bank_path,
    generated_images,
)
from lib_safe_denoiser.errors import BankError

VARIATIONS_TAG = "variations"
CROP_AND_RESIZE = 1
"""The WebUI's img2img ``resize_mode`` that fills the size asked for without stretching the image."""


@dataclass(frozen=True)
class VariationRequest(Generation):
    """``per_image`` img2img variations of each image at ``denoising`` (0..1: how far from the image).
    The prompt names the concept the images show, so the variations stay in it."""

    per_image: int = 8
    denoising: float = 0.4
    prompt: str = ""

    def __post_init__(self) -> None:
        self.check(("per_image",))
        if isinstance(self.denoising, bool) or not isinstance(self.denoising, (int, float)) \
                or not 0 < self.denoising <= 1:
            raise BankError(f"denoising must be a number in (0, 1], got {self.denoising!r}")
        if not isinstance(self.prompt, str):
            raise BankError("prompt must be a text")

    def img2img(self, image: bytes, index: int) -> dict:
        """The img2img body for the ``index``-th image: its own fixed seeds, so a request is repeatable."""
        return {**self.body(self.prompt, self.per_image, self.seed + index * self.per_image),
                "init_images": [base64.b64encode(image).decode("ascii")], "denoising_strength": self.denoising,
                "resize_mode": CROP_AND_RESIZE}


def make_variations(webui: WebUIHttp, source: str, bank: str, request: VariationRequest, *, description: str = "",
                    shared: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Store ``request.per_image`` variations of every image of the bank ``source`` as the new bank
    ``bank`` (tagged ``variations``), image by image: a failure half-way keeps what was stored and
    says how much. Returns ``{"bank", "images", "skipped"}``."""
    detail = webui.get_json(bank_path(source))
    entries = detail.get("images") if isinstance(detail, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BankError(f"the bank {source!r} has no images to vary")
    text = description or (f"{request.per_image} img2img variations of each image of {source!r} at denoising "
                           f"{request.denoising:g}")
    writer = BankWriter(webui.post, bank, text, [VARIATIONS_TAG], shared)
    total = len(entries) * request.per_image
    for index, entry in enumerate(entries):
        stem = PurePath(str(entry.get("source_name") or f"image-{index:04d}")).stem
        try:
            image = webui.get(f"{bank_path(source)}/images/{entry['sha256']}")
            images = generated_images(webui.post, IMG2IMG_PATH, request.img2img(image, index))
            writer.add([{"name": f"{stem}-var{k:02d}.png", "data": data} for k, data in enumerate(images)])
        except BankError as exc:
            raise writer.failed(exc, "variations") from None
        if progress is not None:
            progress((index + 1) * request.per_image, total)
    return writer.result()
