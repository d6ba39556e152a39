"""The concept steering of a WebUI job: the CLIP judge the settings name, loaded once per process,
and the loaded model's VAE decoding with gradient (``lib_safe_denoiser.concepts`` does the rest)."""

from __future__ import annotations

from typing import Any

import torch

from lib_safe_denoiser.concepts.args import ConceptArgs
from lib_safe_denoiser.concepts.clip_judge import JudgeLoader
from lib_safe_denoiser.concepts.decoding import MemoryOptions
from lib_safe_denoiser.concepts.steering import ConceptSteering
from lib_safe_denoiser.concepts.vae import differentiable_decode, vae_blocks
from lib_safe_denoiser.errors import SafeDenoiserError
from safe_denoiser_webui.options import (
    OPT_CLIP_MODEL,
    OPT_CLIP_PRETRAINED,
    OPT_CONCEPT_CHECKPOINT,
    OPT_CONCEPT_DECODE_SCALE,
    OPT_CONCEPT_TILE,
    option,
)

JUDGES = JudgeLoader()
"""The last CLIP judge loaded (by generations and by the tab's curation), kept for the next job."""


def model_device(sd_model: Any) -> torch.device:
    return torch.device(getattr(sd_model, "device", "cpu"))


def judge_for(sd_model: Any):
    """The CLIP judge of the settings, on the model's device; ``SafeDenoiserError`` if it cannot load
    (no network for a download, a bad path)."""
    try:
        return JUDGES.get(str(option(OPT_CLIP_MODEL)), str(option(OPT_CLIP_PRETRAINED)),
                          device=model_device(sd_model))
    except SafeDenoiserError:
        raise
    except Exception as e:  # noqa: BLE001 - open_clip raises whatever its download or unpickling raises
        raise SafeDenoiserError(f"the CLIP model {option(OPT_CLIP_MODEL)!r} ({option(OPT_CLIP_PRETRAINED)!r}) "
                                f"cannot be loaded: {e}") from e


def build_concept_steering(args: ConceptArgs, sd_model: Any) -> ConceptSteering:
    """The job's concept steering: its window in the model's sigmas, the memory options of the settings."""
    checkpoint = bool(option(OPT_CONCEPT_CHECKPOINT))
    memory = MemoryOptions(decode_scale=float(option(OPT_CONCEPT_DECODE_SCALE)),
                           tile_size=int(option(OPT_CONCEPT_TILE)), checkpoint=checkpoint)
    lo, hi = args.sigma_window(sd_model.alphas_cumprod.detach().double().cpu())
    return ConceptSteering(judge=judge_for(sd_model), concepts=args.concept_list,
                           decode=differentiable_decode(sd_model), eta=args.concept_eta, gamma=args.concept_gamma,
                           sigma_min=lo, sigma_max=hi, memory=memory,
                           blocks=vae_blocks(sd_model) if checkpoint else ())
