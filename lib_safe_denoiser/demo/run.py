"""The standalone demo: negate one digit on the bundled digits model, no WebUI needed.

    python -m lib_safe_denoiser demo --out demo_out [--digit 7] [--samples 10000] [--mode odds] [--seed 0]

The negation set is ``--bank-size`` images of the chosen digit (from the training images, or the
held-out ones with ``--bank-source heldout``); the odds mode's reference set is every training
image of the other digits. The same noise is sampled without and with the correction, and the
classifier reads every sample. Writes ``grid.png`` (uncorrected | corrected, samples read as the
negated digit framed in red) and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lib_safe_denoiser import SafeDenoiser
from lib_safe_denoiser.demo.data import load_split
from lib_safe_denoiser.demo.experiment import (
    MODE_CONFIGS,
    generate,
    negation_bank,
    reference_bank,
    score,
    target_features,
)
from lib_safe_denoiser.demo.grid import save_grid
from lib_safe_denoiser.demo.weights import load_classifier, load_denoiser

GRID_SAMPLES = 100
"""Samples per panel of the first pair of panels (the first ones drawn, unselected)."""
GRID_FLAGGED = 40
"""At most this many uncorrected samples read as the negated digit, beside what their noise became."""
BANK_SEED = 0
"""Which images of the digit form the negation set: fixed, so ``--seed`` only changes the noise."""


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo_out")
    digit: int = 7
    samples: int = 10000
    mode: str = "odds"
    seed: int = 0
    steps: int = 32
    bank_size: int = 60
    bank_source: str = "train"
    progress: bool = True

    def validate(self) -> None:
        if not 0 <= self.digit <= 9:
            raise ValueError(f"digit must be 0..9, got {self.digit}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2, got {self.steps}")
        if self.mode not in MODE_CONFIGS:
            raise ValueError(f"mode must be one of {tuple(MODE_CONFIGS)}, got {self.mode!r}")
        if self.bank_source not in ("train", "heldout"):
            raise ValueError(f"bank_source must be 'train' or 'heldout', got {self.bank_source!r}")
        if self.bank_size < 1:
            raise ValueError(f"bank_size must be >= 1, got {self.bank_size}")


def run_demo(opts: DemoOptions) -> dict[str, object]:
    """Run the demo, write ``grid.png`` and ``metrics.json`` to ``opts.out``; return the metrics."""
    opts.validate()
    start = time.perf_counter()
    train, heldout = load_split()
    model, classifier = load_denoiser(), load_classifier()
    source = train if opts.bank_source == "train" else heldout
    negation = negation_bank(source, opts.digit, opts.bank_size, seed=BANK_SEED)
    config = MODE_CONFIGS[opts.mode]
    reference = reference_bank(train, opts.digit) if config.mode == "odds" else None
    safe = SafeDenoiser(negation, reference, config)
    every_features, safe_features = target_features(classifier, heldout, opts.digit)

    noise = torch.randn((opts.samples, 1, 8, 8), generator=torch.Generator().manual_seed(opts.seed))
    base = generate(model, classifier, noise, steps=opts.steps, safe=None, progress=opts.progress,
                    desc="uncorrected")
    corrected = generate(model, classifier, noise, steps=opts.steps, safe=safe, progress=opts.progress,
                         desc=f"corrected ({opts.mode})")
    before = score(base, opts.digit, base, every_features)
    after = score(corrected, opts.digit, base, safe_features)

    opts.out.mkdir(parents=True, exist_ok=True)
    _write_grid(opts.out / "grid.png", base, corrected, opts.digit)
    metrics = {
        "digit": opts.digit,
        "mode": opts.mode,
        "samples": opts.samples,
        "steps": opts.steps,
        "seed": opts.seed,
        "negation_set": {"source": opts.bank_source, "size": int(negation.shape[0]), "seed": BANK_SEED},
        "reference_set_size": 0 if reference is None else int(reference.shape[0]),
        # strict JSON has no inf (an open window edge, no gate): written as null
        "config": {k: None if isinstance(v, float) and not math.isfinite(v) else v
                   for k, v in asdict(config).items() if k not in ("chunk_size", "n_nearest")},
        "uncorrected": before,
        "corrected": after,
        "frechet_ratio": after["frechet_distance"] / before["frechet_distance"],
        "seconds_total": time.perf_counter() - start,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    (opts.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def _write_grid(path: Path, base, corrected, digit: int) -> None:
    first = slice(0, min(GRID_SAMPLES, base.samples.shape[0]))
    flagged_idx = torch.nonzero(base.labels == digit).flatten()[:GRID_FLAGGED]
    panels = [
        (f"uncorrected (first {first.stop})", base.samples[first], base.labels[first] == digit),
        ("corrected, same noise", corrected.samples[first], corrected.labels[first] == digit),
    ]
    if flagged_idx.numel():
        panels += [
            (f"uncorrected read as {digit}", base.samples[flagged_idx], base.labels[flagged_idx] == digit),
            ("same noise, corrected", corrected.samples[flagged_idx], corrected.labels[flagged_idx] == digit),
        ]
    save_grid(path, panels)


def summary(metrics: dict[str, object], out: Path) -> str:
    """A few lines for the terminal."""
    b, a = metrics["uncorrected"], metrics["corrected"]
    digit = metrics["digit"]
    n = metrics["samples"]
    lines = [
        f"negating digit {digit} ({metrics['mode']} mode, negation set: {metrics['negation_set']['size']} "
        f"{metrics['negation_set']['source']} images), {n} samples, {metrics['steps']} Euler steps",
        f"  samples read as {digit}:  {100 * b['negated_share']:.2f}% uncorrected -> "
        f"{100 * a['negated_share']:.2f}% corrected",
        f"  Frechet distance:       {b['frechet_distance']:.3f} -> {a['frechet_distance']:.3f} "
        f"(x{metrics['frechet_ratio']:.3f})",
        f"  class-histogram TV to the ideal (without {digit}): {a['histogram_tv']:.4f}",
        f"  correction acted on {100 * a['acted_share']:.1f}% of (sample, step) pairs",
        f"wrote {out / 'grid.png'} and {out / 'metrics.json'} in {metrics['seconds_total']:.1f}s",
    ]
    return "\n".join(lines)
