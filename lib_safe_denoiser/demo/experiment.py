"""One negation experiment on the digits: the banks, the per-mode settings, sampling and scoring.

Shared by the demo (``run.py``) and the benchmark (``benchmarks/bench_digits.py``) so that
both measure the same thing the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.demo.data import Digits
from lib_safe_denoiser.demo.metrics import class_histogram, classify, frechet_distance, total_variation, without_class
from lib_safe_denoiser.demo.models import DigitClassifier, EDMDenoiser
from lib_safe_denoiser.demo.sampler import sample

MODE_CONFIGS: dict[str, SafeDenoiserConfig] = {
    # beta0 and the window measured with benchmarks/bench_digits.py (see its table and the README).
    # Digit 7, 10k samples, 32 steps: beta0 = 3 leaves 0.33% 7s, 4 leaves 0.22%, 5 leaves 0.16%
    # (TV 0.018 / 0.022 / 0.025); beta0 = 10 leaves 0.11% at TV 0.044. The lower edge of the
    # window hardly matters (0.1, 0.2 or 0.4: same numbers); widening it to sigma 6 barely helps
    # and costs TV, narrowing it to 1.5 triples the 7s left.
    "odds": SafeDenoiserConfig(mode="odds", strength=5.0, prior=0.1, cap=100.0, sigma_min=0.2, sigma_max=3.0,
                               reference_kind="safe"),
    # The official Stable Diffusion recipe's numbers, its window (sigma 4.67..14.6 for latents of
    # unit scale) rescaled by the digits' sigma_data (0.75) and clipped to the schedule.
    "paper": SafeDenoiserConfig(mode="paper", bandwidth=3.15, scale=0.33, gate_margin=1.6, sigma_min=3.5,
                                sigma_max=10.0),
    "constant": SafeDenoiserConfig(mode="constant", strength=1.0, sigma_min=0.2, sigma_max=3.0),
}


def negation_bank(digits: Digits, digit: int, size: int, seed: int) -> torch.Tensor:
    """``size`` images of ``digit`` drawn without replacement with a fixed seed."""
    pool = digits.of_class(digit)
    if size > pool.shape[0]:
        raise ValueError(f"only {pool.shape[0]} images of digit {digit} are available, asked for {size}")
    pick = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))[:size]
    return pool[pick]


def varied_bank(model: EDMDenoiser, negation: torch.Tensor, copies: int, sigma: float, *, steps: int,
                seed: int) -> torch.Tensor:
    """The negation set and ``copies`` variations of each image made by the model itself: each image
    noised to ``sigma`` and denoised again (img2img), so the bank covers the concept as the model draws
    it, not only at its few images."""
    if copies == 0:
        return negation
    start = negation.repeat(copies, 1, 1, 1)
    noise = torch.randn(start.shape, generator=torch.Generator().manual_seed(seed)).to(start.device)
    # sample() starts from noise * sigma_max: this noise puts the start at image + sigma * noise
    varied = sample(model, start / sigma + noise, steps=steps, sigma_max=sigma)
    return torch.cat([negation, varied])


def reference_bank(train: Digits, digit: int) -> torch.Tensor:
    """Generic safe images for the odds mode: every training image of the other classes.

    This is the setting the theorem's posterior odds are written for (a safe density against
    the unsafe one, with prior z); the pooled alternative (the model's own samples) would cost
    a full sampling run before the first corrected one.
    """
    return train.without_class(digit)


@dataclass
class Outcome:
    """Samples of one run and what the classifier reads in them."""

    samples: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor
    seconds: float
    acted_share: float


def generate(model: EDMDenoiser, classifier: DigitClassifier, noise: torch.Tensor, *, steps: int,
             safe: SafeDenoiser | None, heun: bool = False, progress: bool = False, desc: str = "") -> Outcome:
    """Sample from ``noise`` (with the correction if ``safe`` is given) and classify the results.

    acted_share is the share of (sample, step) pairs where the correction acted.
    """
    acted = [0, 0]

    def correct(x: torch.Tensor, sigma: float, x0: torch.Tensor) -> torch.Tensor:
        out = safe.correct(x, sigma, x0)  # type: ignore[union-attr]  # only passed when safe is set
        diag = safe.last_diagnostics  # type: ignore[union-attr]
        acted[0] += int(diag.acted.sum())
        acted[1] += diag.acted.numel()
        return out

    start = time.perf_counter()
    samples = sample(model, noise, steps=steps, correct=correct if safe is not None else None, heun=heun,
                     progress=progress, desc=desc)
    seconds = time.perf_counter() - start
    samples = samples.cpu()
    labels, features = classify(classifier, samples)
    return Outcome(samples, labels, features, seconds, acted[0] / max(1, acted[1]))


def target_features(classifier: DigitClassifier, heldout: Digits, digit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier features of the two target distributions: (every held-out digit, the held-out digits
    without ``digit``). The uncorrected model is scored against the first, a corrected run against
    the second: each against the distribution it is meant to sample."""
    _, every = classify(classifier, heldout.images)
    return every, every[heldout.labels != digit]


def score(outcome: Outcome, digit: int, baseline: Outcome, target_features: torch.Tensor) -> dict[str, object]:
    """The numbers the demo and the benchmark report for one run.

    TV is measured to the ideal safe histogram: the *uncorrected* model's class histogram from
    the same noise with ``digit`` removed and renormalised, so it counts only what the
    correction distorts, not the model's own error. The Frechet distance compares the
    classifier's penultimate features of the samples with ``target_features`` (see
    ``target_features``: all held-out digits for the uncorrected model, those without ``digit``
    for a corrected run), so that removing the digit itself is not counted as a loss of quality.
    """
    hist = class_histogram(outcome.labels)
    ideal = without_class(class_histogram(baseline.labels), digit)
    return {
        "negated_share": float(hist[digit]),
        "class_histogram": [round(float(h), 5) for h in hist],
        "histogram_tv": total_variation(hist, ideal),
        "frechet_distance": frechet_distance(outcome.features, target_features),
        "acted_share": outcome.acted_share,
        "finite": bool(np.isfinite(outcome.samples.numpy()).all()),
        "seconds": outcome.seconds,
    }
