"""Digits benchmark: negate one digit on the bundled 8x8 digits model.

For each digit and each source of the negation set (training images, held-out images), the same
noise is sampled without the correction ("none") and with each mode at the demo's settings
(``lib_safe_denoiser.demo.experiment.MODE_CONFIGS``). Prints, per mode and source, averaged over
the digits: the share of samples the classifier reads as the negated digit, the Frechet
distance of the classifier's features to the held-out digits (all of them for "none", those
without the negated digit for a corrected run: each against the distribution it should sample)
and its ratio to the uncorrected model's, the class-histogram TV to the ideal renormalised histogram, and the share of
(sample, step) pairs where the correction acted.

    python benchmarks/bench_digits.py [--digits 7] [--samples 10000] [--steps 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
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
from lib_safe_denoiser.demo.run import BANK_SEED
from lib_safe_denoiser.demo.weights import load_classifier, load_denoiser

SOURCES = ("train", "heldout")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", default="7", help="comma-separated digits to negate, averaged (default: 7)")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=32, help="Euler steps (the demo's default)")
    parser.add_argument("--bank-size", type=int, default=60, help="negation set size")
    parser.add_argument("--modes", default=",".join(MODE_CONFIGS), help="comma-separated modes")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    digits = [int(d) for d in args.digits.split(",")]
    modes = args.modes.split(",")

    train, heldout = load_split()
    model, classifier = load_denoiser(), load_classifier()
    noise = torch.randn((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(args.seed))

    rows: dict[tuple[str, str], list[dict[str, object]]] = {}
    start = time.perf_counter()
    for digit in digits:
        every_features, safe_features = target_features(classifier, heldout, digit)
        base = generate(model, classifier, noise, steps=args.steps, safe=None)
        rows.setdefault(("none", "-"), []).append(score(base, digit, base, every_features) | {"ratio": 1.0})
        base_fd = rows[("none", "-")][-1]["frechet_distance"]
        # the held-out split has 58 to 61 images of a digit: both sources get the same size
        size = min(args.bank_size, *(int((d.labels == digit).sum()) for d in (train, heldout)))
        for source in SOURCES:
            negation = negation_bank(train if source == "train" else heldout, digit, size, seed=BANK_SEED)
            for mode in modes:
                cfg = MODE_CONFIGS[mode]
                safe = SafeDenoiser(negation, reference_bank(train, digit) if cfg.mode == "odds" else None, cfg)
                out = generate(model, classifier, noise, steps=args.steps, safe=safe)
                s = score(out, digit, base, safe_features)
                rows.setdefault((mode, source), []).append(s | {"ratio": s["frechet_distance"] / base_fd})
        print(f"  digit {digit} done ({time.perf_counter() - start:.0f}s)", flush=True)

    print(f"digits 8x8, negated digit(s) {','.join(map(str, digits))} (mean over them; 'max %': the worst digit), "
          f"negation set {args.bank_size} images (fewer where the held-out split has fewer)")
    print(f"{args.samples} samples, Euler {args.steps} steps (Karras), noise seed {args.seed}; FD against the "
          f"held-out digits (without the negated one for the corrected runs)")
    print(f"{'mode':<9} {'negation':<8} {'negated %':>9} {'max %':>6} {'FD':>7} {'FD/none':>8} {'TV':>7} "
          f"{'acted %':>8} {'s/run':>6}")
    for (mode, source), runs in rows.items():
        def mean(key: str, runs=runs) -> float:
            return float(np.mean([r[key] for r in runs]))

        worst = max(float(r["negated_share"]) for r in runs)
        print(f"{mode:<9} {source:<8} {100 * mean('negated_share'):>9.3f} {100 * worst:>6.2f} "
              f"{mean('frechet_distance'):>7.3f} {mean('ratio'):>8.3f} {mean('histogram_tv'):>7.4f} "
              f"{100 * mean('acted_share'):>8.2f} {mean('seconds'):>6.1f}")

if __name__ == "__main__":
    main()
