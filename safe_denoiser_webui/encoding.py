"""Encode a bank now, with the loaded model's VAE, the way a generation would.

Holds the WebUI's queue lock for the whole encode, so it never runs beside a generation and a
model switch (which takes the same lock) cannot swap the VAE half-way. Progress goes to the
console (tqdm), to ``shared.state`` (so ``/sdapi/v1/progress`` and the WebUI's progress bar show
it) and to an optional callback (gradio's progress); ``/sdapi/v1/interrupt`` cancels it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modules import call_queue, shared
from tqdm import tqdm

from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE
from lib_safe_denoiser.errors import BankError
from safe_denoiser_webui.model import encoder_for, model_problem, vae_id
from safe_denoiser_webui.options import OPT_ENCODE_BATCH, option
from safe_denoiser_webui.services import store

JOB_NAME = "safe_denoiser_encode"


@dataclass(frozen=True)
class EncodeResult:
    bank: str
    vae_id: str
    latent_hw: tuple[int, int]
    n_images: int

    def as_dict(self) -> dict:
        return {"bank": self.bank, "vae_id": self.vae_id, "latent_hw": list(self.latent_hw),
                "n_images": self.n_images}


def latent_hw_for(width: int, height: int) -> tuple[int, int]:
    """The latent size a generation of ``width`` x ``height`` pixels samples at."""
    if width < LATENT_DOWNSCALE or height < LATENT_DOWNSCALE or width % LATENT_DOWNSCALE or height % LATENT_DOWNSCALE:
        raise BankError(f"width and height must be positive multiples of {LATENT_DOWNSCALE}, got {width}x{height}")
    return height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE


def encode_now(bank: str, width: int, height: int,
               progress: Callable[[int, int], None] | None = None) -> EncodeResult:
    """Encode ``bank`` for the current model's VAE at a ``width`` x ``height`` generation size
    (a no-op when that cache exists); ``BankError`` (``EncodeCancelled`` when interrupted)."""
    hw = latent_hw_for(width, height)
    with call_queue.queue_lock:
        model = shared.sd_model
        problem = model_problem(model) if model is not None else "no model is loaded"
        if problem:
            raise BankError(problem)
        ident = vae_id(model)
        n = store().get(bank).n_images
        shared.state.begin(job=JOB_NAME)
        shared.state.job_count = 1
        shared.state.sampling_steps = n
        shared.state.textinfo = f"Safe denoiser: encoding bank {bank!r}"
        bar = tqdm(total=n, desc=f"Safe denoiser: encoding {bank}", unit="img")

        def report(done: int, total: int) -> None:
            bar.update(done - bar.n)
            shared.state.sampling_step, shared.state.sampling_steps = done, total
            shared.state.textinfo = f"Safe denoiser: encoding bank {bank!r} {done}/{total}"
            if progress is not None:
                progress(done, total)

        try:
            store().latents(bank, encoder=encoder_for(model), vae_id=ident, latent_hw=hw,
                          batch_size=int(option(OPT_ENCODE_BATCH)), progress=report,
                          cancel=lambda: bool(shared.state.interrupted))
        finally:
            bar.close()
            shared.state.end()
    return EncodeResult(bank, ident, hw, n)
