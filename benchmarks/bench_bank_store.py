"""The bank store under load: reading a big cached bank, and two processes writing one bank at once.

1. Load: a bank of N images (default 3,000) whose latents for one VAE at 64x64 (a 512x512 image)
   are in the cache; ``BankStore.latents`` reads the manifest, loads and checks the safetensors
   file (N x 4 x 64 x 64 float32, ~200 MB for 3,000) and permutes the rows into the bank's order.
   Target: at most 0.5 s. The cache file is written with the store's own writer from random
   latents, so no 3,000 VAE passes are needed to set it up.
2. Two writers: two processes (spawn, as two WebUI instances) append different images to the same
   bank for R rounds each, running a ``gc`` without grace period after every append. Prints the
   images expected and present afterwards; "lost" must be 0.

    python benchmarks/bench_bank_store.py [--n 3000] [--repeats 5] [--rounds 25] [--per-round 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lib_safe_denoiser.banks.inputs import InputLimits  # noqa: E402
from lib_safe_denoiser.banks.latent_cache import LatentKey  # noqa: E402
from lib_safe_denoiser.banks.store import BankStore  # noqa: E402
from tests.banks.store_helpers import append_rounds, bank_is_whole, make_images  # noqa: E402

TARGET_LOAD_S = 0.5
LATENT_HW = (64, 64)
CHANNELS = 4
VAE_ID = "bench-vae"


def _refuse_to_encode(pixels: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the benchmark bank should come from the cache, not be encoded")


def bench_load(work: Path, n: int, repeats: int) -> None:
    store = BankStore(work / "store")
    images = make_images(work / "images", n)
    t0 = time.perf_counter()
    report = store.create("big", images, limits=InputLimits(max_files=n, max_total_bytes=1 << 40))
    info = report.info
    print(f"set-up: created a bank of {info.n_images} images in {time.perf_counter() - t0:.1f} s")
    key = LatentKey(info.content_hash, VAE_ID, info.resize, LATENT_HW)
    latents = torch.randn(n, CHANNELS, *LATENT_HW, generator=torch.Generator().manual_seed(0))
    store.cache.write(key, latents)
    size_mb = store.cache.path(key).stat().st_size / 1e6
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = store.latents("big", encoder=_refuse_to_encode, vae_id=VAE_ID, latent_hw=LATENT_HW)
        times.append(time.perf_counter() - t0)
        assert out.shape == (n, CHANNELS, *LATENT_HW)
    best, median = min(times), statistics.median(times)
    print(f"load {n} cached {LATENT_HW[0]}x{LATENT_HW[1]} latents ({size_mb:.0f} MB file): best {best:.3f} s, "
          f"median {median:.3f} s over {repeats}; target {TARGET_LOAD_S} s, median/target "
          f"{median / TARGET_LOAD_S:.2f}")


def bench_two_writers(work: Path, rounds: int, per_round: int) -> None:
    root = work / "shared-store"
    store = BankStore(root)
    store.create("shared", make_images(work / "base", 1))
    n = rounds * per_round
    folders = [work / "w0", work / "w1"]
    make_images(folders[0], n, start=100_000)
    make_images(folders[1], n, start=200_000)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=append_rounds, args=(str(root), "shared", str(f), rounds, per_round, barrier,
                                                       results)) for f in folders]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    done = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    expected = {p.name for f in folders for p in f.iterdir()} | {"img000.png"}
    present = {e["source_name"] for e in store.image_entries("shared")}
    print(f"two writers: {sum(r for _, r in done)} rounds ({rounds} each, {per_round} images per append, gc after "
          f"each) in {wall:.1f} s incl. process start-up; images expected {len(expected)}, present "
          f"{len(present & expected)}, lost {len(expected - present)}; manifest valid and every file intact: "
          f"{bank_is_whole(store, 'shared')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="images in the loaded bank (default 3000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=25, help="appends per writer process (default 25)")
    parser.add_argument("--per-round", type=int, default=2, help="images per append (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_load(Path(tmp), args.n, args.repeats)
        bench_two_writers(Path(tmp), args.rounds, args.per_round)


if __name__ == "__main__":
    main()
