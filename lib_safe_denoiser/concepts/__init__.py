"""Text-defined concepts with CLIP: the SFW sampler's steering and CLIP-assisted bank curation.

Pure torch (open_clip is imported only when a model is loaded); never imports the WebUI or gradio.
"""

from lib_safe_denoiser.concepts.args import ConceptArgs, fraction_window_to_sigmas
from lib_safe_denoiser.concepts.clip_judge import ClipJudge, JudgeLoader, TextEmbeddingCache, load_clip
from lib_safe_denoiser.concepts.curation import CurationReport, ImageScore, clip_near_duplicates, score_images
from lib_safe_denoiser.concepts.decoding import MemoryOptions, decode_for_judge, decoder_blocks
from lib_safe_denoiser.concepts.parsing import ConceptError, parse_concepts
from lib_safe_denoiser.concepts.steering import ConceptSteering, ConceptStep, ConceptSummary
from lib_safe_denoiser.concepts.vae import differentiable_decode, vae_blocks

__all__ = [
    "ClipJudge",
    "ConceptArgs",
    "ConceptError",
    "ConceptStep",
    "ConceptSteering",
    "ConceptSummary",
    "CurationReport",
    "ImageScore",
    "JudgeLoader",
    "MemoryOptions",
    "TextEmbeddingCache",
    "clip_near_duplicates",
    "decode_for_judge",
    "decoder_blocks",
    "differentiable_decode",
    "fraction_window_to_sigmas",
    "load_clip",
    "parse_concepts",
    "score_images",
    "vae_blocks",
]
