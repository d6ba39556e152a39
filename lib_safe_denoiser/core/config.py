"""Configuration of the safe denoiser: one validated value object shared by every front-end."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

Mode = Literal["odds", "paper", "constant"]
ReferenceKind = Literal["safe", "data"]
SafeMean = Literal["model", "reference"]

MODES: tuple[str, ...] = ("odds", "paper", "constant")
PAPER_REFERENCE_DIM = 4 * 64 * 64
"""SD 1.x's latent at 512x512: the size the official recipes' bandwidths were tuned at."""
REFERENCE_KINDS: tuple[str, ...] = ("safe", "data")
SAFE_MEANS: tuple[str, ...] = ("model", "reference")


@dataclass(frozen=True)
class SafeDenoiserConfig:
    """All knobs of the correction (docs/method.md).

    mode:
        ``"odds"`` — beta from the estimated posterior odds of the bank against a reference set;
        ``"paper"`` — the official Stable Diffusion recipe (kernel on the denoised prediction);
        ``"constant"`` — beta fixed inside the window (ablations).
    strength: beta0, the multiplier of beta in the odds and constant modes.
    prior: z, the unsafe share of the data the odds mode assumes.
    cap: upper bound of the odds (beta <= strength * cap), so that a sample sitting on a bank
        image is pushed hard but finitely.
    sigma_min, sigma_max: the window, in k-diffusion sigma, where the correction acts.
    bandwidth, scale, gate_margin: the paper mode's kernel bandwidth h, correction scale s and
        the margin below the calibrated gate threshold (inf: no gate, always on).
    safe_mean: where the odds mode takes the safe posterior mean from. ``"reference"`` (default):
        from the kernel mean of the safe reference set, D + strength * pi (E_ref - E_u) with
        pi = odds / (1 + odds); ``"model"``: from the model's prediction, D + beta (D - E_u) (the
        paper's form). Both are the same identity; the first stays bounded where a sample sits
        deep in the bank's region, where the second amplifies the bank's sampling noise by beta
        (2-D benchmark: 0.13% diverged samples with "model", none with "reference"). A pooled
        reference (reference_kind "data") holds unsafe samples too, so it needs "model".
    carry: the paper mode carries its correction into the sampler's state as the official loop does
        (``core/carry.py``: the prediction is changed so that the next state moves by the whole
        correction, re-noised); False changes the prediction alone, which a sampler step carries
        forward only in part (about a tenth per step at 50 steps).
    reference_dim: the latent size (C * h * w) the paper recipes' bandwidths are numbers for: 4 x 64 x 64,
        SD 1.x at 512x512, where the official recipes were validated. The paper kernel's bandwidth
        is scaled to the bank's latent size from it (``SafeDenoiser.paper_bandwidth``), so a recipe
        means the same at every resolution and on every family; 0 uses the bandwidth as it is.
    project_bank: the paper mode divides each bank latent's channel vector at every position by its
        norm before use, as the official code does (its bandwidths and gate are calibrated in that
        geometry); the prediction is not projected (it is not on SD 1.x in the official code).
    smoothing: h, the odds and constant modes' bandwidth floor. The bank and the reference set are
        read as Gaussian densities of width h around their images, noised to sigma (kernel variance
        sigma^2 + h^2), so a sample of the concept that is near none of the bank's few images still
        scores as the concept where the bare noised bank (h = 0) is a sum of spikes at low noise.
    min_beta: rows whose beta falls below this are left untouched (and do not count as acted).
    reference_kind: ``"safe"`` if the reference set holds safe images, ``"data"`` if it holds
        samples of the model itself (the pooled estimator).
    chunk_size: bank rows per streamed block; bounds extra memory whatever the bank size.
    n_nearest: how many nearest bank entries the diagnostics report per row.
    """

    mode: Mode = "odds"
    strength: float = 1.0
    prior: float = 0.1
    cap: float = 100.0
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    bandwidth: float = 3.15
    scale: float = 0.33
    gate_margin: float = 1.6
    safe_mean: SafeMean = "reference"
    carry: bool = True
    reference_dim: int = PAPER_REFERENCE_DIM
    project_bank: bool = True
    smoothing: float = 0.0
    min_beta: float = 1e-3
    reference_kind: ReferenceKind = "safe"
    chunk_size: int = 256
    n_nearest: int = 4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; called on construction."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.reference_kind not in REFERENCE_KINDS:
            raise ValueError(f"reference_kind must be one of {REFERENCE_KINDS}, got {self.reference_kind!r}")
        for name in ("strength", "prior", "cap", "sigma_min", "sigma_max", "bandwidth", "scale",
                     "gate_margin", "smoothing", "min_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {self.prior}")
        if not self.cap > 0 or math.isinf(self.cap):
            raise ValueError(f"cap must be a finite number > 0, got {self.cap}")
        if self.sigma_min < 0 or self.sigma_max < self.sigma_min:
            raise ValueError(f"the sigma window must satisfy 0 <= sigma_min <= sigma_max, "
                             f"got [{self.sigma_min}, {self.sigma_max}]")
        if not self.bandwidth > 0 or math.isinf(self.bandwidth):
            raise ValueError(f"bandwidth must be a finite number > 0, got {self.bandwidth}")
        if self.safe_mean not in SAFE_MEANS:
            raise ValueError(f"safe_mean must be one of {SAFE_MEANS}, got {self.safe_mean!r}")
        if self.safe_mean == "reference" and self.reference_kind != "safe":
            raise ValueError("reference_kind='data' needs safe_mean='model': a reference of model samples "
                             "holds unsafe images too, so its kernel mean is not a safe posterior mean")
        for name in ("carry", "project_bank"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.smoothing < 0 or math.isinf(self.smoothing):
            raise ValueError(f"smoothing must be a finite number >= 0, got {self.smoothing}")
        if self.min_beta < 0:
            raise ValueError(f"min_beta must be >= 0, got {self.min_beta}")
        if isinstance(self.reference_dim, bool) or not isinstance(self.reference_dim, int) or self.reference_dim < 0:
            raise ValueError(f"reference_dim must be an integer >= 0, got {self.reference_dim!r}")
        for name in ("chunk_size", "n_nearest"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "chunk_size" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'chunk_size' else 0}, got {value!r}")

    def replace(self, **changes: object) -> SafeDenoiserConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def in_window(self, sigma: float) -> bool:
        return sigma > 0 and self.sigma_min <= sigma <= self.sigma_max
