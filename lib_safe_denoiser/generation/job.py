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

from lib_safe_denoiser.banks.model_samples import MODEL_SAMPLES_TAG
from lib_safe_denoiser.banks.store import BankInfo, BankStore
from lib_safe_denoiser.banks.variations import VARIATIONS_TAG
from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.concepts.args import to_infotext as concept_infotext
from lib_safe_denoiser.concepts.steering import ConceptSteering
from lib_safe_denoiser.core.config import SafeDenoiserConfig
from lib_safe_denoiser.core.denoiser import SafeDenoiser
from lib_safe_denoiser.core.reference import NEIGHBOURS, clean_reference, share_for
from lib_safe_denoiser.generation.args import BANK_SEPARATOR, SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import KEY_BANK, KEY_ERROR, policy_infotext, to_infotext
from lib_safe_denoiser.generation.steering import Steering
from lib_safe_denoiser.generation.trace import GenerationTrace
from lib_safe_denoiser.policy.presets_store import PresetRef

logger = logging.getLogger(__name__)

Encoder = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclass
class Job:
    """What the extension does to one generation; ``p`` is the WebUI's processing object.

    ``banks`` are every bank it negates (the user's, then the operator's always-on ones), as one
    negation set. ``preset`` and ``notes`` (what the operator's policy changed) go to infotext.
    ``fail_closed``: a failure refuses the job; False only where an operator enforces steering but
    chose to let jobs through unsteered when it cannot be set up. ``enforced``: the operator's policy
    switched this job on or raised it (every pass is then steered, hires fix included).
    """

    args: SafeDenoiserArgs
    banks: tuple[BankInfo, ...]
    reference: BankInfo | None
    p: object = None
    preset: PresetRef | None = None
    notes: tuple[str, ...] = ()
    fail_closed: bool = True
    enforced: bool = False
    concepts: ConceptArgs | None = None
    """The text concepts steered away from (None: none), with ``concept_steering`` doing it."""
    concept_steering: ConceptSteering | None = None
    trace: GenerationTrace = field(default_factory=GenerationTrace)
    steering: Steering | None = None
    error: str | None = None

    def start_pass(self, safe: SafeDenoiser | None, *, new_image: bool, concepts: bool = True) -> None:
        """Begin a sampling pass with the bank correction ``safe`` (None: none) and, where ``concepts``,
        the job's concept steering; with neither the pass is unsteered (hires fix when disabled).

        ``new_image`` (a first pass, not a hires pass) starts a fresh trace for the batch.
        """
        if new_image:
            self.trace = GenerationTrace()
        concept_steering = self.concept_steering if concepts else None
        self.steering = None if safe is None and concept_steering is None else Steering(safe, self.trace,
                                                                                       concept_steering)

    def fail(self, message: str) -> None:
        """Record the first failure; later ones are consequences of it."""
        if self.error is None:
            self.error = message
            logger.error("safe denoiser: %s", message)

    @property
    def bank_names(self) -> str:
        return BANK_SEPARATOR.join(b.name for b in self.banks)

    def infotext(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.banks:
            summary = self.trace.summary() if self.trace.steps else None
            out = to_infotext(self.args, BANK_SEPARATOR.join(b.short_hash for b in self.banks), summary)
            out[KEY_BANK] = self.bank_names  # the operator's always-on banks too: what really ran
        out.update(policy_infotext(self.preset, self.notes))
        if self.concepts is not None and self.concept_steering is not None:
            steering = self.concept_steering
            out.update(concept_infotext(self.concepts, steering.judge.label,
                                        steering.summary() if steering.steps else None))
        if self.error is not None:
            out[KEY_ERROR] = self.error
        return out


@dataclass(frozen=True)
class _Key:
    banks: tuple[str, ...]
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
        samples = job.reference is not None and MODEL_SAMPLES_TAG in job.reference.tags
        # a reference of model samples is cleaned against the images the user gave: variations also stray
        # into neighbouring concepts, which cleaning against them would thin out of the reference
        given = [i for i, b in enumerate(job.banks) if VARIATIONS_TAG not in b.tags] or list(range(len(job.banks)))
        cleaned = " cleaned against " + ",".join(job.banks[i].content_hash for i in given) if samples else ""
        key = _Key(tuple(b.content_hash for b in job.banks),
                   (job.reference.content_hash + cleaned) if job.reference else "", vae_id, (h, w), config)
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

        banks = [latents(b) for b in job.banks]
        negation = torch.cat(banks) if len(banks) > 1 else banks[0]
        reference = latents(job.reference) if job.reference else None
        if samples:  # the model's own samples: drop those that resemble this job's negation banks
            if reference.shape[0] <= NEIGHBOURS:
                raise ValueError(f"the reference bank {job.reference.name!r} holds model samples (tag "
                                 f"{MODEL_SAMPLES_TAG!r}) and needs more than {NEIGHBOURS} of them, it has "
                                 f"{reference.shape[0]}")
            reference = clean_reference(reference, torch.cat([banks[i] for i in given]), share_for(config.prior))[0]
        safe = SafeDenoiser(negation, reference, config)
        self._cache[key] = safe
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return safe

    def clear(self) -> None:
        self._cache.clear()
