"""Digits benchmark: negate one digit on the bundled 8x8 digits model.

For each digit and each source of the negation set (training images, held-out images), the same
noise is sampled without the correction ("none") and with each mode at the demo's settings
(``lib_safe_denoiser.demo.experiment.MODE_CONFIGS``). Prints, per mode and source, averaged over
the digits: the share of samples the classifier reads as the negated digit, the Frechet
distance of the classifier's features to the held-out digits (all of them for "none", those
without the negated digit for a corrected run: each against the distribution it should sample)
and its ratio to the uncorrected model's, the class-histogram TV to the ideal renormalised histogram, and the share of
(sample, step) pairs where the correction acted.

    python benchmarks/bench_digits.py [--digits 7|all] [--samples 10000] [--steps 32] [--threads 1]
        [--bank-size 60] [--sources train,heldout] [--reference real|model|pooled] [--set odds.strength=5]
        [--device cpu]

The odds mode's reference set is, by default, every training image of the other digits ("real").
``--reference model`` makes it from the model's own samples instead, as a WebUI user would
(``lib_safe_denoiser.core.reference``): ``--reference-size`` uncorrected samples from another noise seed,
with the share 3 x ``prior`` of them the negation bank explains best dropped. ``pooled`` keeps them all
and reads them as the model's data distribution (``reference_kind="data"``). ``--variations K`` adds K
model-made variations of each negation image (img2img at ``--variation-sigma``) to the negation set; a model
reference is cleaned against the given images only (``--clean-against all``: and their variations).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a fresh clone
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig  # noqa: E402
from lib_safe_denoiser.core.reference import SHARE_PER_PRIOR, clean_reference  # noqa: E402
from lib_safe_denoiser.demo.data import load_split  # noqa: E402
from lib_safe_denoiser.demo.experiment import (  # noqa: E402
    MODE_CONFIGS,
    generate,
    negation_bank,
    reference_bank,
    score,
    target_features,
    varied_bank,
)
from lib_safe_denoiser.demo.run import BANK_SEED  # noqa: E402
from lib_safe_denoiser.demo.weights import load_classifier, load_denoiser  # noqa: E402

SOURCES = ("train", "heldout")
REFERENCES = ("real", "model", "pooled")


def overridden(configs: dict[str, SafeDenoiserConfig], settings: list[str]) -> dict[str, SafeDenoiserConfig]:
    """``configs`` with each ``mode.field=value`` of ``settings`` applied (value typed as the field)."""
    types = {f.name: f.type for f in fields(SafeDenoiserConfig)}
    out = dict(configs)
    for setting in settings:
        target, _, value = setting.partition("=")
        mode, _, name = target.partition(".")
        if mode not in out or name not in types or not value:
            raise SystemExit(f"--set wants mode.field=value with a mode of {tuple(out)} and a config field, "
                             f"got {setting!r}")
        kind = types[name]
        typed = value == "true" if kind == "bool" else int(value) if kind == "int" else \
            float(value) if kind == "float" else value
        out[mode] = out[mode].replace(**{name: typed})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", default="7", help="comma-separated digits to negate, averaged, or 'all' "
                        "(default: 7)")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=32, help="Euler steps (the demo's default)")
    parser.add_argument("--bank-size", type=int, default=60, help="negation set size")
    parser.add_argument("--sources", default=",".join(SOURCES), help="where the negation set is drawn from")
    parser.add_argument("--modes", default=",".join(MODE_CONFIGS), help="comma-separated modes")
    parser.add_argument("--reference", choices=REFERENCES, default="real", help="the odds mode's reference set")
    parser.add_argument("--reference-size", type=int, default=2000, help="model samples in a model reference")
    parser.add_argument("--clean-share", type=float, default=None,
                        help="share of the model samples dropped from a model reference (default: 3 x prior)")
    parser.add_argument("--clean-against", choices=("given", "all"), default="given",
                        help="clean a model reference against the given negation images (as a WebUI job does: "
                        "not against banks tagged 'variations') or against them and their variations")
    parser.add_argument("--variations", type=int, default=0,
                        help="add this many model-made variations of each negation image (img2img)")
    parser.add_argument("--variation-sigma", type=float, default=1.0, help="the variations' noise level")
    parser.add_argument("--set", action="append", default=[], metavar="MODE.FIELD=VALUE",
                        help="change one config field of a mode (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device of the model and the correction")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    digits = list(range(10)) if args.digits == "all" else [int(d) for d in args.digits.split(",")]
    modes = args.modes.split(",")
    configs = overridden(MODE_CONFIGS, args.set)
    device = torch.device(args.device)

    train, heldout = load_split()
    model, classifier = load_denoiser().to(device), load_classifier().to(device)
    noise = torch.randn((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(args.seed)).to(device)
    model_samples = None
    if args.reference != "real":
        ref_noise = torch.randn((args.reference_size, 1, 8, 8),
                                generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
        model_samples = generate(model, classifier, ref_noise, steps=args.steps, safe=None).samples.to(device)

    rows: dict[tuple[str, str], list[dict[str, object]]] = {}
    start = time.perf_counter()
    for digit in digits:
        every_features, safe_features = target_features(classifier, heldout, digit)
        base = generate(model, classifier, noise, steps=args.steps, safe=None)
        rows.setdefault(("none", "-"), []).append(score(base, digit, base, every_features) | {"ratio": 1.0})
        base_fd = rows[("none", "-")][-1]["frechet_distance"]
        # the held-out split has 58 to 61 images of a digit: both sources get the same size
        size = min(args.bank_size, *(int((d.labels == digit).sum()) for d in (train, heldout)))
        for source in args.sources.split(","):
            given = negation_bank(train if source == "train" else heldout, digit, size, seed=BANK_SEED).to(device)
            negation = varied_bank(model, given, args.variations, args.variation_sigma, steps=args.steps,
                                   seed=args.seed + 2)
            for mode in modes:
                cfg = configs[mode]
                reference = None
                if cfg.mode == "odds":
                    reference, cfg = odds_reference(args.reference, cfg, model_samples,
                                                    given if args.clean_against == "given" else negation,
                                                    reference_bank(train, digit).to(device), args.clean_share)
                safe = SafeDenoiser(negation, reference, cfg)
                out = generate(model, classifier, noise, steps=args.steps, safe=safe)
                s = score(out, digit, base, safe_features)
                rows.setdefault((mode, source), []).append(s | {"ratio": s["frechet_distance"] / base_fd})
        shares = ", ".join(f"{mode} {source} {100 * float(runs[-1]['negated_share']):.2f}% "
                           f"(TV {float(runs[-1]['histogram_tv']):.3f})"
                           for (mode, source), runs in rows.items() if mode != "none")
        print(f"  digit {digit} done ({time.perf_counter() - start:.0f}s): {shares}", flush=True)

    print(f"digits 8x8, negated digit(s) {','.join(map(str, digits))} (mean over them; 'max %': the worst digit), "
          f"negation set {args.bank_size} images (fewer where the held-out split has fewer)")
    print(f"{args.samples} samples, Euler {args.steps} steps (Karras), noise seed {args.seed}; FD against the "
          f"held-out digits (without the negated one for the corrected runs); odds reference: {args.reference}"
          + (f" ({args.reference_size} model samples)" if args.reference != "real" else ""))
    for setting in args.set:
        print(f"  set {setting}")
    print(f"{'mode':<9} {'negation':<8} {'negated %':>9} {'max %':>6} {'FD':>7} {'FD/none':>8} {'TV':>7} "
          f"{'acted %':>8} {'s/run':>6}")
    for (mode, source), runs in rows.items():
        def mean(key: str, runs=runs) -> float:
            return float(np.mean([r[key] for r in runs]))

        worst = max(float(r["negated_share"]) for r in runs)
        print(f"{mode:<9} {source:<8} {100 * mean('negated_share'):>9.3f} {100 * worst:>6.2f} "
              f"{mean('frechet_distance'):>7.3f} {mean('ratio'):>8.3f} {mean('histogram_tv'):>7.4f} "
              f"{100 * mean('acted_share'):>8.2f} {mean('seconds'):>6.1f}")


def odds_reference(kind: str, cfg: SafeDenoiserConfig, model_samples: torch.Tensor | None, negation: torch.Tensor,
                   real: torch.Tensor, share: float | None) -> tuple[torch.Tensor, SafeDenoiserConfig]:
    """The odds mode's reference set and config for ``--reference``."""
    if kind == "real":
        return real, cfg
    assert model_samples is not None
    if kind == "pooled":
        return model_samples, cfg.replace(reference_kind="data", safe_mean="model")
    share = SHARE_PER_PRIOR * cfg.prior if share is None else share
    return clean_reference(model_samples, negation, share)[0], cfg


if __name__ == "__main__":
    main()
