"""Cost of one corrected step of the concept steering: decode with gradient, CLIP forward, backward.

Per image size and memory option (``MemoryOptions``): milliseconds per corrected step of one
image (``ConceptSteering.steer`` with every sample triggered) and the peak memory the step needs
beyond the loaded models, in a fresh process per row, from the kernel's high-water mark of its
resident memory (VmHWM, reset before the timed steps; Linux).
The decoder is a random-weight stand-in with SD's VAE decoder layout (sd_vae_decoder.py), the
judge a random-weight open_clip ViT-B-16: timing and memory do not depend on the weights.

    python benchmarks/bench_concepts.py                 # 64x64 and 512x512
    python benchmarks/bench_concepts.py --sizes 1024    # SDXL's size (slow on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from lib_safe_denoiser.concepts.decoding import MemoryOptions, decoder_blocks  # noqa: E402

OPTIONS: dict[str, MemoryOptions] = {
    "full": MemoryOptions(),
    "decode_scale 0.5": MemoryOptions(decode_scale=0.5),
    "tile_size 40": MemoryOptions(tile_size=40),
    "checkpoint (blocks)": MemoryOptions(checkpoint=True),
}
SIZES = (64, 512)
SCALE_FACTOR = 0.18215
"""SD's latent scale: the steering works on scaled latents, the decode divides by it (as the WebUI's)."""
JUDGE = ("ViT-B-16", "")
CONCEPTS = "nudity, violence, blood"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def reset_peak_rss() -> None:
    """Start the kernel's high-water mark (VmHWM) afresh, so it measures the timed steps only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def one_row(size: int, option: str, steps: int) -> dict[str, float]:
    """Runs in a fresh process: the models, then ``steps`` timed corrected steps (the median is
    reported, so with 3 steps the first call's set-up does not count). No warm-up before the memory
    mark: memory a warm-up freed would be reused unseen."""
    from tests.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()  # the registry's torchvision is a CUDA build; see there
    from sd_vae_decoder import SDDecoder

    from lib_safe_denoiser.concepts import ConceptSteering, load_clip

    torch.manual_seed(0)
    judge = load_clip(*JUDGE)
    decoder = SDDecoder().eval().requires_grad_(False)
    steering = ConceptSteering(judge, CONCEPTS, lambda z: decoder(z / SCALE_FACTOR), eta=-1.0,
                               memory=OPTIONS[option], blocks=decoder_blocks(decoder))
    judge.text_embeddings(steering.concepts)  # computed once per concept list, not per step
    x0 = torch.randn(1, 4, size // 8, size // 8)
    before = rss_mib()
    reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = steering.steer(x0)
        times.append((time.perf_counter() - start) * 1000)
    assert steering.steps[-1].n_triggered == 1 and out is not x0  # the backward ran (random weights may give it zeros)
    return {"ms": statistics.median(times), "peak_mib": max(0.0, peak_rss_mib() - before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="image sizes (square, pixels)")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row (default: 3 below 512 px, else 1)")
    parser.add_argument("--row", nargs=2, metavar=("SIZE", "OPTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(one_row(int(args.row[0]), args.row[1], args.steps or 1)))
        return
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs (timings stretch with it)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; judge {JUDGE[0]} (random weights), "
          "SD-layout VAE decoder (random weights), batch 1, one corrected step = decode + CLIP forward + backward")
    print(f"{'image':>9} | {'memory option':<20} | {'ms / step':>10} | {'peak MiB':>9}")
    print("-" * 58)
    for size in args.sizes:
        steps = args.steps or (3 if size < 512 else 1)
        for option in args.options:
            done = subprocess.run([sys.executable, __file__, "--row", str(size), option, "--steps", str(steps)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                print(f"{f'{size}x{size}':>9} | {option:<20} | failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{f'{size}x{size}':>9} | {option:<20} | {row['ms']:>10.0f} | {row['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
