"""Cost of one ``SafeDenoiser.correct`` call next to one Stable Diffusion 1.5 UNet forward.

The UNet is diffusers' UNet2DConditionModel with the SD-1.5 configuration and random weights
(timing does not depend on the weights), at the WebUI's latent shape 4x64x64 (a 512x512
image). Banks of N = 1k, 10k, 100k random latents. Also measures the peak memory a correct
call needs beyond the bank, in a fresh process, from the kernel's high-water mark.

    pip install -r benchmarks/requirements.txt && python benchmarks/bench_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a fresh clone
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig  # noqa: E402

LATENT = (4, 64, 64)
REFERENCE_SIZE = 1000


def sd15_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def unet_seconds(batch: int, repeats: int) -> float:
    unet = sd15_unet()
    x = torch.randn(batch, *LATENT)
    t = torch.full((batch,), 500.0)
    ctx = torch.randn(batch, 77, 768)
    with torch.inference_mode():
        return best_of(lambda: unet(x, t, encoder_hidden_states=ctx), repeats)


def correct_seconds(denoiser: SafeDenoiser, batch: int, sigma: float, repeats: int) -> float:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *LATENT, generator=gen) * (1 + sigma)
    d = torch.randn(batch, *LATENT, generator=gen)
    with torch.inference_mode():
        return best_of(lambda: denoiser.correct(x, sigma, d), repeats)


def make(mode: str, n: int) -> SafeDenoiser:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(n, *LATENT, generator=gen)
    ref = torch.randn(REFERENCE_SIZE, *LATENT, generator=gen) if mode == "odds" else None
    return SafeDenoiser(bank, ref, SafeDenoiserConfig(mode=mode, gate_margin=1e9))


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(n: int, mode: str, batch: int) -> dict:
    """Run in a fresh process: bank RSS, then the high-water mark of a correct call above it."""
    sd = make(mode, n)
    sd.correct(torch.randn(1, *LATENT), 10.0, torch.randn(1, *LATENT))  # lazy per-device set-up
    x = torch.randn(batch, *LATENT) * 11
    d = torch.randn(batch, *LATENT)
    with open("/proc/self/clear_refs", "w") as clear:  # reset VmHWM to the current RSS
        clear.write("5")
    before = _rss_bytes("VmRSS:")
    with torch.inference_mode():
        sd.correct(x, 10.0, d)
    return {"bank_bytes": n * 4 * 64 * 64 * 4, "extra_bytes": _rss_bytes("VmHWM:") - before}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unet-repeats", type=int, default=2)
    parser.add_argument("--memory-probe", nargs=3, metavar=("N", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        n, mode, batch = args.memory_probe
        print(json.dumps(memory_probe(int(n), mode, int(batch))))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, latent {LATENT}, fp32, CPU")
    unet = {b: unet_seconds(b, args.unet_repeats) for b in args.batches}
    for b, s in unet.items():
        print(f"SD-1.5 UNet forward, batch {b}: {1000 * s:.0f} ms")
    print(f"\n{'mode':<6} {'N':>7} {'batch':>5} {'correct ms':>11} {'% of UNet':>10}")
    for mode in ("paper", "odds"):
        for n in args.sizes:
            sd = make(mode, n)
            for b in args.batches:
                s = correct_seconds(sd, b, sigma=10.0, repeats=args.repeats)
                print(f"{mode:<6} {n:>7} {b:>5} {1000 * s:>11.1f} {100 * s / unet[b]:>9.2f}%")
            del sd
    print(f"\n{'mode':<6} {'N':>7} {'batch':>5} {'bank MB':>8} {'extra MB':>9}")
    for mode in ("paper", "odds"):
        n, b = max(args.sizes), max(args.batches)
        out = subprocess.run([sys.executable, __file__, "--memory-probe", str(n), mode, str(b)],
                             check=True, capture_output=True, text=True, env={**os.environ})
        probe = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:<6} {n:>7} {b:>5} {probe['bank_bytes'] / 2**20:>8.0f} {probe['extra_bytes'] / 2**20:>9.1f}")


if __name__ == "__main__":
    main()
