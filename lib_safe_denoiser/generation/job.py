"""One generation job of the extension, from validated arguments to infotext, without the WebUI.

The WebUI glue creates a ``Job`` when a generation starts with the extension enabled, asks the
``DenoiserFactory`` for a SafeDenoiser at the start of every sampling pass (the hires-fix pass
has another latent size), steers through ``Job.steering`` and reads back ``Job.infotext()``.
Failures are recorded on the job (``error``) so that the glue can fail closed: the WebUI only
logs exceptions raised by scripts and callbacks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lib_safe_denoiser.banks.store import BankInfo, BankStore
from lib_safe_denoiser.core.config import SafeDenoiserConfig
from lib_safe_denoiser.core.denoiser import SafeDenoiser
from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import KEY_ERROR, to_infotext
from lib_safe_denoiser.generation.steering import Steering
from lib_safe_denoiser.generation.trace import GenerationTrace

logger = logging.getLogger(__name__)

Encoder = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclass
class Job:
    """What the extension does to one generation; ``p`` is the WebUI's processing object."""

    args: SafeDenoiserArgs
    bank: BankInfo
    reference: BankInfo | None
    p: object = None
    trace: GenerationTrace = field(default_factory=GenerationTrace)
    steering: Steering | None = None
    error: str | None = None

    def start_pass(self, safe: SafeDenoiser | None, *, new_image: bool) -> None:
        """Begin a sampling pass; ``safe=None`` leaves the pass unsteered (hires fix when disabled).

        ``new_image`` (a first pass, not a hires pass) starts a fresh trace for the batch.
        """
        if new_image:
            self.trace = GenerationTrace()
        self.steering = None if safe is None else Steering(safe, self.trace)

    def fail(self, message: str) -> None:
        """Record the first failure; later ones are consequences of it."""
        if self.error is None:
            self.error = message
            logger.error("safe denoiser: %s", message)

    def infotext(self) -> dict[str, str]:
        summary = self.trace.summary() if self.trace.steps else None
        out = to_infotext(self.args, self.bank.short_hash, summary)
        if self.error is not None:
            out[KEY_ERROR] = self.error
        return out


@dataclass(frozen=True)
class _Key:
    bank: str
    reference: str
    vae_id: str
    latent_hw: tuple[int, int]
    config: SafeDenoiserConfig


class DenoiserFactory:
    """SafeDenoisers for passes, built from the bank store and kept for the next jobs.

    The store caches latents on disk; this keeps the last ``capacity`` ready-made denoisers in
    memory (their latents and, in the paper mode, the calibrated gate) so a second generation
    with the same bank, VAE and size reads nothing and encodes nothing.
    """

    def __init__(self, store: BankStore, capacity: int = 2) -> None:
        self.store = store
        self.capacity = capacity
        self._cache: OrderedDict[_Key, SafeDenoiser] = OrderedDict()

    def build(self, job: Job, *, alphas_cumprod: torch.Tensor, encoder: Encoder, vae_id: str,
              latent_shape: tuple[int, int, int], batch_size: int = 4,
              progress: Progress | None = None) -> SafeDenoiser:
        """The denoiser for latents of ``latent_shape`` (C, h, w) made by ``vae_id``."""
        channels, h, w = latent_shape
        config = job.args.to_config(alphas_cumprod.detach().double().cpu())
        key = _Key(job.bank.content_hash, job.reference.content_hash if job.reference else "", vae_id, (h, w), config)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]

        def latents(info: BankInfo) -> torch.Tensor:
            lat = self.store.latents(info.name, encoder=encoder, vae_id=vae_id, latent_hw=(h, w),
                                     batch_size=batch_size, progress=progress)
            if lat.shape[1] != channels:
                raise ValueError(f"bank {info.name!r} encodes to {lat.shape[1]}-channel latents but this model "
                                 f"samples {channels}-channel latents; it was made for another model family")
            return lat

        safe = SafeDenoiser(latents(job.bank), latents(job.reference) if job.reference else None, config)
        self._cache[key] = safe
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return safe

    def clear(self) -> None:
        self._cache.clear()
