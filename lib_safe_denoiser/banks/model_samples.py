"""A reference bank of the model's own samples, made through a running WebUI's REST API.

The odds mode weighs the negation bank against a reference of safe images, which WebUI users rarely
have. The model can make one: samples of generic prompts, asked of ``/sdapi/v1/txt2img`` batch by
batch and stored through ``/safe-denoiser/v1/banks`` as a bank tagged ``model-samples``. Such samples
hold the concept about as often as the model draws it, so a job removes from them, against its own
negation banks, those that resemble the bank (``core/reference.py``); the bank itself keeps them all,
so one reference serves every negation bank. Only HTTP is used: it runs from anywhere that can reach
the WebUI, with the caller's ``--api-auth`` login, and the bank is theirs like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lib_safe_denoiser.banks.webui_http import TXT2IMG_PATH, BankWriter, Generation, Post, generated_images
from lib_safe_denoiser.errors import BankError

MODEL_SAMPLES_TAG = "model-samples"
"""The tag that makes a job clean a reference bank against its negation banks before use."""
GENERIC_PROMPTS: tuple[str, ...] = (
    "a photo", "a painting", "a portrait of a person", "a landscape", "an animal", "a city street",
    "a room", "an illustration")
"""Prompts that ask for nothing in particular, so the samples cover what the model draws by itself."""


@dataclass(frozen=True)
class SampleRequest(Generation):
    """What to ask the model for: ``count`` images, the prompts taken in turn, one per batch."""

    count: int = 200
    prompts: tuple[str, ...] = GENERIC_PROMPTS
    batch_size: int = 4

    def __post_init__(self) -> None:
        self.check(("count", "batch_size"))
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise BankError("prompts must be a non-empty list of texts")

    def batches(self) -> list[dict]:
        """The txt2img bodies, in order: fixed seeds, so the same request makes the same bank."""
        return [self.body(self.prompts[i % len(self.prompts)], min(self.batch_size, self.count - start),
                          self.seed + start)
                for i, start in enumerate(range(0, self.count, self.batch_size))]


def make_reference(post: Post, bank: str, request: SampleRequest, *, description: str = "",
                   shared: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample ``request`` through ``post`` and store the images as the new bank ``bank`` (tagged
    ``model-samples``): the first batch creates it, the next ones are added, so a failure half-way
    keeps what was made and says how much. Returns ``{"bank", "images", "skipped"}``."""
    made = 0
    text = description or f"{request.count} samples of the model for generic prompts (a reference for the odds mode)"
    writer = BankWriter(post, bank, text, [MODEL_SAMPLES_TAG], shared)
    for body in request.batches():
        try:
            writer.add([{"name": f"sample-{made + i:05d}.png", "data": data}
                        for i, data in enumerate(generated_images(post, TXT2IMG_PATH, body))])
        except BankError as exc:
            raise writer.failed(exc, "samples") from None
        made += body["batch_size"]
        if progress is not None:
            progress(made, request.count)
    return writer.result()
