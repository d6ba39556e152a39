"""Concept steering (the SFW sampler's trajectory correction) on the model's denoised prediction.

At a corrected step the combined prediction x0 is decoded with gradient, CLIP compares each image
with the concepts, and a sample whose highest similarity passes ``eta`` moves against the
gradient of its log similarity:

    x0' = x0 - gamma * grad_x0 sum_k log p_k        (only the sample's ``top_k`` highest p_k)

Samples that do not trigger, and steps outside the window, are returned untouched: the very
values given, not a recomputation. Works on x0 in the model's latent space (what the WebUI's CFG
callbacks hand over for k-diffusion samplers, and what the bank correction edits), so it composes
with the bank correction through the same ``correct(x_t, sigma, denoised)`` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lib_safe_denoiser.concepts.clip_judge import ClipJudge
from lib_safe_denoiser.concepts.constants import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ETA,
    DEFAULT_GAMMA,
    DEFAULT_TOP_K,
    LOG_FLOOR,
)
from lib_safe_denoiser.concepts.decoding import Decode, MemoryOptions, decode_for_judge
from lib_safe_denoiser.concepts.parsing import ConceptError, parse_concepts


@dataclass(frozen=True)
class ConceptStep:
    """What one corrected step found and did."""

    sigma: float | None
    max_similarity: tuple[float, ...]
    """Each sample's highest concept similarity."""
    triggered: tuple[bool, ...]

    @property
    def n_triggered(self) -> int:
        return sum(self.triggered)


@dataclass(frozen=True)
class ConceptSummary:
    """The steering over one generation, for infotext: triggered samples per judged step."""

    triggered_per_step: tuple[int, ...]
    max_similarity: float
    """The highest similarity any sample reached at any judged step (nan if none was judged)."""


@dataclass(eq=False)
class ConceptSteering:
    """Steer the denoised prediction away from text concepts, judged by CLIP.

    judge: the CLIP judge (``load_clip``).
    concepts: the concepts (a text or a list; parsed and validated).
    decode: ``decode(latents) -> images in [-1, 1]``, differentiable; see ``decoding.Decode``.
    eta: a sample is steered when its highest similarity is above this.
    gamma: the step along -grad log p, in latent units.
    sigma_min, sigma_max: the window in k-diffusion sigma (as ``SafeDenoiserConfig``); a step
        outside it is not judged at all (no decode, no cost).
    top_k: how many of a sample's highest similarities enter the log sum (None: all concepts).
    memory: how the decode-with-gradient fits in memory (``MemoryOptions``: each option's cost).
    blocks: the decoder's blocks, for per-block checkpointing (``decoding.decoder_blocks``).
    chunk_size: samples decoded and judged together; 1 holds one image's activations at a time.
    """

    judge: ClipJudge
    concepts: Sequence[str] | str
    decode: Decode
    eta: float = DEFAULT_ETA
    gamma: float = DEFAULT_GAMMA
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    top_k: int | None = DEFAULT_TOP_K
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    blocks: Sequence[torch.nn.Module] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    steps: list[ConceptStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.concepts = parse_concepts(self.concepts)
        for name in ("eta", "gamma", "sigma_min", "sigma_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ConceptError(f"{name} must be a number, got {value!r}")
        if not -1.0 <= self.eta < 1.0:
            raise ConceptError(f"eta must lie in [-1, 1): it is a cosine similarity, got {self.eta}")
        if self.gamma < 0 or math.isinf(self.gamma):
            raise ConceptError(f"gamma must be a finite number >= 0, got {self.gamma}")
        if self.sigma_min < 0 or self.sigma_max < self.sigma_min:
            raise ConceptError(f"the sigma window must satisfy 0 <= sigma_min <= sigma_max, "
                               f"got [{self.sigma_min}, {self.sigma_max}]")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ConceptError(f"top_k must be a whole number >= 1 or None, got {self.top_k!r}")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ConceptError(f"chunk_size must be a whole number >= 1, got {self.chunk_size!r}")

    # ------------------------------------------------------------------ the correction
    def in_window(self, sigma: float) -> bool:
        return sigma > 0 and self.sigma_min <= sigma <= self.sigma_max

    def log_p(self, similarities: torch.Tensor) -> torch.Tensor:
        """Per-sample sum of log similarity over its ``top_k`` highest concepts ([B, K] -> [B])."""
        sims = similarities
        if self.top_k is not None and self.top_k < sims.shape[1]:
            sims = sims.topk(self.top_k, dim=1).values
        return sims.clamp_min(LOG_FLOOR).log().sum(dim=1)

    def steer(self, x0: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """``x0`` [B, C, h, w] with the triggered samples moved; ``x0`` itself when none moved.

        ``sigma``: the step's noise level (one number, or one per sample); None judges regardless
        of the window. Every judged step is recorded in ``steps``.
        """
        if x0.ndim != 4:
            raise ValueError(f"x0 must be [B, C, h, w] latents, got {tuple(x0.shape)}")
        rows = self._rows_in_window(sigma, x0.shape[0])
        if not rows:
            return x0
        sims_max = torch.full((x0.shape[0],), math.nan)
        triggered = torch.zeros(x0.shape[0], dtype=torch.bool)
        grads: dict[int, torch.Tensor] = {}
        for start in range(0, len(rows), self.chunk_size):
            chunk = rows[start:start + self.chunk_size]
            top, grad = self._judge(x0[chunk])
            fire = top > self.eta
            sims_max[chunk] = top
            triggered[chunk] = fire
            if grad is not None:
                grads.update({row: grad[i] for i, row in enumerate(chunk) if fire[i]})
        self.steps.append(ConceptStep(_sigma_value(sigma), tuple(float(v) for v in sims_max[rows]),
                                      tuple(bool(v) for v in triggered[rows])))
        if not grads:
            return x0
        out = x0.clone()
        for row, grad in grads.items():
            out[row] = (x0[row].float() - self.gamma * grad.to(x0.device)).to(x0.dtype)
        return out

    def _judge(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each sample's highest similarity (CPU) and, if any passes ``eta``, the gradient of the
        triggered samples' log p with respect to ``x0``. The graph is gone when this returns, so one
        chunk's activations are alive at a time."""
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x0.detach().float().clone().requires_grad_(True)
            sims = self.judge.similarities(decode_for_judge(self.decode, leaf, self.memory, self.blocks),
                                           self.concepts)
            top = sims.detach().max(dim=1).values.cpu()
            fire = top > self.eta
            if not fire.any():
                return top, None
            (grad,) = torch.autograd.grad(self.log_p(sims)[fire.to(sims.device)].sum(), leaf)
            return top, grad

    def correct(self, x_t: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """The ``correct(x_t, sigma, denoised)`` protocol of ``generation.cfg_rows`` (``x_t`` unused):
        returns ``denoised`` itself when nothing changed."""
        return self.steer(denoised, sigma)

    def _rows_in_window(self, sigma: float | torch.Tensor | None, batch: int) -> list[int]:
        if sigma is None:
            return list(range(batch))
        values = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
        if values.numel() == 1:
            values = values.expand(batch)
        if values.numel() != batch:
            raise ValueError(f"sigma has {values.numel()} values for {batch} samples")
        return [i for i, s in enumerate(values.tolist()) if self.in_window(s)]

    # ------------------------------------------------------------------ diagnostics
    def summary(self) -> ConceptSummary:
        finite = [s for step in self.steps for s in step.max_similarity if not math.isnan(s)]
        return ConceptSummary(tuple(step.n_triggered for step in self.steps), max(finite) if finite else math.nan)

    def reset(self) -> None:
        """Forget the recorded steps (a new generation with the same steering)."""
        self.steps.clear()


def _sigma_value(sigma: float | torch.Tensor | None) -> float | None:
    if sigma is None:
        return None
    values = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
    return float(values.max())
