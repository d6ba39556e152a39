"""2-D benchmark: a mixture of 8 Gaussians on a circle, one mode negated.

The data denoiser is exact (the posterior mean of the Gaussian mixture), so every error left is
the safe denoiser's own. Prints, per mode: the unsafe share, the total variation of the mode
histogram to the ideal renormalised weights, and the share of diverged samples.

    python benchmarks/bench_mixture.py [--samples 10000] [--steps 50]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a fresh clone
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig, karras_sigmas  # noqa: E402

RADIUS, STD, MODES, NEGATED = 4.0, 0.25, 8, 0
DIVERGED_DISTANCE = 6 * STD  # farther than this from every mode centre: not a sample of the mixture


def centres() -> torch.Tensor:
    angle = torch.arange(MODES, dtype=torch.float64) * (2 * math.pi / MODES)
    return RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)


def mixture_denoiser(mu: torch.Tensor, weights: torch.Tensor):
    """Exact E[x0 | x_t] of sum_k w_k N(mu_k, STD^2 I) noised by sigma."""

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        var = STD**2 + sigma**2
        logits = weights.log() - ((x[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * var)
        resp = torch.softmax(logits, dim=1)
        post = mu[None] + (STD**2 / var) * (x[:, None, :] - mu[None])
        return (resp[..., None] * post).sum(1)

    return denoise


def euler(denoise, correct, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    x = noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, s)
        if correct is not None:
            x0 = correct(x, s, x0)
        x = x + (s_next - s) * (x - x0) / s
    return x


def evaluate(samples: torch.Tensor, mu: torch.Tensor) -> dict[str, float]:
    dist = torch.cdist(samples, mu)
    nearest = dist.min(dim=1)
    finite = torch.isfinite(samples).all(dim=1)
    diverged = (~finite) | (nearest.values > DIVERGED_DISTANCE)
    ok = nearest.indices[~diverged]
    hist = torch.bincount(ok, minlength=MODES).double() / max(1, ok.numel())
    ideal = torch.full((MODES,), 1.0 / (MODES - 1), dtype=torch.float64)
    ideal[NEGATED] = 0.0
    return {
        "unsafe": float((nearest.indices == NEGATED)[~diverged].double().sum()) / samples.shape[0],
        "tv": 0.5 * float((hist - ideal).abs().sum()),
        "diverged": float(diverged.double().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--bank", type=int, default=200, help="negation set size N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    mu = centres()
    uniform = torch.full((MODES,), 1.0 / MODES, dtype=torch.float64)
    safe_w = uniform.clone()
    safe_w[NEGATED] = 0.0
    safe_w /= safe_w.sum()
    negation = mu[NEGATED] + STD * torch.randn(args.bank, 2, generator=gen, dtype=torch.float64)
    safe_modes = torch.tensor([k for k in range(MODES) if k != NEGATED])
    reference = mu[safe_modes.repeat_interleave(args.bank)] + STD * torch.randn(
        args.bank * (MODES - 1), 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(args.samples, 2, generator=gen, dtype=torch.float64)
    sigmas = karras_sigmas(args.steps, 0.002, 80.0)
    data_denoiser = mixture_denoiser(mu, uniform)

    def safe_denoiser(cfg: SafeDenoiserConfig):
        sd = SafeDenoiser(negation, reference if cfg.mode == "odds" else None, cfg)
        return sd.correct

    odds = SafeDenoiserConfig(mode="odds", strength=1.0, prior=1 / MODES, cap=100.0, n_nearest=0)
    constant = SafeDenoiserConfig(mode="constant", sigma_min=1.0, sigma_max=16.0, n_nearest=0)
    runs = [
        ("none (model as is)", data_denoiser, None),
        ("exact safe denoiser", mixture_denoiser(mu, safe_w.clamp_min(1e-300)), None),
        ("odds, E_safe from reference", data_denoiser, safe_denoiser(odds)),
        ("odds, E_safe from model", data_denoiser, safe_denoiser(odds.replace(safe_mean="model"))),
        ("odds, model, sigma >= 0.5", data_denoiser, safe_denoiser(odds.replace(safe_mean="model", sigma_min=0.5))),
        ("paper s=0.33 h=3.15", data_denoiser, safe_denoiser(SafeDenoiserConfig(mode="paper", n_nearest=0))),
        ("constant 0.5, sigma 1..16", data_denoiser, safe_denoiser(constant.replace(strength=0.5))),
        ("constant 2, sigma 1..16", data_denoiser, safe_denoiser(constant.replace(strength=2.0))),
    ]
    print(f"mixture of {MODES} Gaussians (radius {RADIUS}, std {STD}), mode {NEGATED} negated, "
          f"N = {args.bank}, Euler {args.steps} steps (Karras), {args.samples} samples")
    print(f"{'run':<30} {'unsafe %':>9} {'TV':>7} {'diverged %':>11} {'time s':>7}")
    for name, denoise, correct in runs:
        start = time.perf_counter()
        out = euler(denoise, correct, noise, sigmas)
        m = evaluate(out, mu)
        print(f"{name:<30} {100 * m['unsafe']:>9.3f} {m['tv']:>7.4f} {100 * m['diverged']:>11.3f} "
              f"{time.perf_counter() - start:>7.2f}")


if __name__ == "__main__":
    main()
