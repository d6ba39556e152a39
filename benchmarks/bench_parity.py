"""Parity benchmark: the official safe denoiser loop against the extension's paper mode, per sampler family.

For each sampler, the same noise (and the same sampler noise) is sampled three ways: without any
correction, with the official loop's state replacement (``benchmarks/official_reference.py``)
and through the extension's hook, i.e. ``SafeDenoiser.correct`` on every model call as the
WebUI callbacks run it. Printed per row: the negated share, the mean final displacement from
the uncorrected samples, and ours as a share of the reference's effect (negated-share drop,
displacement). Two problems: the bundled 8x8 digits model (bank of 60 sevens, projected the
official way: each pixel vector over the channel axis divided by its norm, which on one channel
is the sign) and a 2-D mixture of 8 Gaussians (bank of 200 points of the negated mode, raw: a
2-D point has no channel axis to normalise). The schedule is Stable Diffusion's DDPM one at 50
steps (timesteps 981..1), the window the official 780 <= t <= 1000, the recipe scale 0.33,
bandwidth 3.15 and, on the digits, the calibrated gate with margin 1.6 (on the mixture the gate
would stay shut: the always-on form of the recipes for people and artworks is used there). The
official re-noising draws the same noise in the reference and in ours (common random numbers: the
rows differ only by what the hook cannot do exactly).

    python benchmarks/bench_parity.py [--samples 4000] [--problems digits,mixture] [--samplers ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.official_reference import (  # noqa: E402
    INFERENCE_STEPS,
    WINDOW_T,
    KernelFast,
    ddpm_timesteps,
    project,
    sample,
    sd_alphas_cumprod,
    sigma_of,
    state_replacement,
)
from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig  # noqa: E402
from lib_safe_denoiser.core.carry import UNIPC_DEFAULTS, Carry  # noqa: E402

SAMPLERS = ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_sde", "plms", "unipc", "ddpm")
ETA = {"euler_a": 1.0, "dpmpp_sde": 1.0, "ddpm": 1.0}
"""The ancestral samplers' eta (the others: 0), as the glue reads it from the WebUI's sampler."""
SECOND_ORDER = ("heun", "dpmpp_sde")
CARRY = {"euler": "step", "euler_a": "step", "ddpm": "step", "heun": "heun", "dpmpp_sde": "midpoint",
         "dpmpp_2m": "multistep", "plms": "plms", "unipc": "unipc"}
"""What the glue carries each sampler as (the others: the prediction alone)."""
NEGATED_DIGIT = 7
BANK_SIZE = 60
MIXTURE = {"radius": 4.0, "std": 0.25, "modes": 8, "bank": 200}


def schedule(steps: int = INFERENCE_STEPS) -> tuple[list[float], tuple[float, float], torch.Tensor]:
    """(sigmas of the DDPM timesteps then 0, the window in sigma, alphas_cumprod)."""
    alphas = sd_alphas_cumprod()
    sigmas = [sigma_of(t, alphas) for t in ddpm_timesteps(steps)] + [0.0]
    return sigmas, (sigma_of(WINDOW_T[0], alphas), sigma_of(WINDOW_T[1] - 1, alphas)), alphas


def digits_problem():
    """The digits in the official recipe's geometry: the bank projected (the reference projects it
    with the official code's formula, ours with the paper mode's) and the calibrated gate."""
    from lib_safe_denoiser.demo.data import load_split
    from lib_safe_denoiser.demo.experiment import negation_bank
    from lib_safe_denoiser.demo.metrics import classify
    from lib_safe_denoiser.demo.run import BANK_SEED
    from lib_safe_denoiser.demo.weights import load_classifier, load_denoiser

    train, _ = load_split()
    model, classifier = load_denoiser(), load_classifier()
    bank = negation_bank(train, NEGATED_DIGIT, BANK_SIZE, seed=BANK_SEED)

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return model(x, sigma)

    def negated(samples: torch.Tensor) -> float:
        labels, _ = classify(classifier, samples)
        return float((labels == NEGATED_DIGIT).double().mean())

    return denoise, bank, (1, 8, 8), negated, True


def mixture_problem():
    """Raw 2-D points (no channel axis to project) and no gate (it would stay shut)."""
    radius, std, modes = MIXTURE["radius"], MIXTURE["std"], MIXTURE["modes"]
    angle = torch.arange(modes, dtype=torch.float32) * (2 * math.pi / modes)
    mu = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    bank = mu[0] + std * torch.randn(MIXTURE["bank"], 2, generator=torch.Generator().manual_seed(1))

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        var = std**2 + sigma**2
        resp = torch.softmax(-((x[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * var), dim=1)
        return (resp[..., None] * (mu[None] + (std**2 / var) * (x[:, None, :] - mu[None]))).sum(1)

    def negated(samples: torch.Tensor) -> float:
        return float((torch.cdist(samples, mu).argmin(dim=1) == 0).double().mean())

    return denoise, bank, (2,), negated, False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--problems", default="digits,mixture")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sigmas, window, alphas = schedule()
    problems = {"digits": digits_problem, "mixture": mixture_problem}

    print(f"parity: official loop (state replacement) vs the extension's hook; DDPM schedule, "
          f"{len(sigmas) - 1} steps, window sigma {window[0]:.2f}..{window[1]:.2f}, {args.samples} samples")
    print(f"{'problem':<8} {'sampler':<10} {'run':<10} {'negated %':>9} {'displ.':>7} "
          f"{'share eff.':>10} {'displ. eff.':>11} {'s':>5}")
    for name in args.problems.split(","):
        denoise, bank, shape, negated, official = problems[name]()
        repel = KernelFast(project(bank) if official else bank)
        config = SafeDenoiserConfig(mode="paper", bandwidth=repel.bandwidth, scale=repel.scale, gate_margin=math.inf,
                                    sigma_min=window[0], sigma_max=window[1], project_bank=official,
                                    reference_dim=0, n_nearest=0)
        if official:
            repel.calibrate(alphas)
            config = config.replace(gate_margin=repel.margin)
        safe = SafeDenoiser(bank, None, config)
        if official:
            safe.calibrate_gate(sigma=sigma_of(1, alphas))
        noise = torch.randn((args.samples, *shape), generator=torch.Generator().manual_seed(args.seed))
        for kind in args.samplers.split(","):
            runs = {
                "none": (denoise, None),
                "reference": (denoise, "replace"),
                "ours x0": (hooked(denoise, safe, kind, sigmas), None),
                "ours": (hooked(denoise, safe, kind, sigmas, seed=args.seed + 2), None),
            }
            base = None
            for run, (model, replace) in runs.items():
                start = time.perf_counter()
                rep = state_replacement(repel, window, torch.Generator().manual_seed(args.seed + 2))
                out = sample(kind, model, noise * sigmas[0], sigmas, torch.Generator().manual_seed(args.seed + 1),
                             rep if replace else None)
                share = negated(out)
                if base is None:
                    base, ref = (out, share), None
                displacement = float((out - base[0]).flatten(1).norm(dim=1).mean())
                if run == "reference":
                    ref = (share, displacement)
                effect = ""
                if run.startswith("ours") and ref is not None:
                    drop = (base[1] - share) / (base[1] - ref[0]) if base[1] != ref[0] else math.nan
                    effect = f"{drop:>10.2f} {displacement / ref[1]:>11.2f}"
                print(f"{name:<8} {kind:<10} {run:<10} {100 * share:>9.2f} {displacement:>7.3f} {effect:>22} "
                      f"{time.perf_counter() - start:>5.1f}", flush=True)


def hooked(denoise, safe: SafeDenoiser, kind: str, sigmas: list[float], seed: int | None = None,
           unipc: tuple[int, str, bool] = UNIPC_DEFAULTS):
    """The model as the WebUI's CFG callbacks leave it: every call's prediction corrected; with a
    ``seed``, carried into the state (core/carry.py) on the samplers the carry supports, as the glue
    does it (a step's second call known from the call count on second-order samplers; UniPC's
    order, variant and lower order final as the WebUI's settings give them)."""
    carry_kind = CARRY.get(kind)
    carry = Carry(carry_kind, ETA.get(kind, 0.0), torch.Generator().manual_seed(seed), unipc=unipc) \
        if seed is not None and carry_kind is not None else None
    calls = [0]

    def model(x: torch.Tensor, sigma: float) -> torch.Tensor:
        d = denoise(x, sigma)
        out = safe.correct(x, sigma, d)
        second = (kind in SECOND_ORDER and calls[0] % 2 == 1) or (kind == "plms" and calls[0] == 1)
        calls[0] += 1
        if carry is None:
            return out
        if second:
            return carry.second(d.flatten(1)).reshape(x.shape)
        steps_left = sum(1 for s in sigmas if 0 < s <= sigma) - (kind == "unipc")  # UniPC ends at sigmas[-2]
        flat = d.flatten(1)
        return carry.first(x.flatten(1), sigma, flat, flat if out is d else out.flatten(1),
                           safe.last_diagnostics.acted, steps_left).reshape(x.shape)

    return model


if __name__ == "__main__":
    main()
