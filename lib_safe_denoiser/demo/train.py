"""Train the demo's denoiser and classifier on the train split and write them to ``assets/``.

    python -m lib_safe_denoiser.demo.train            # about 3 minutes on one CPU thread

Deterministic for a given seed and torch build (single process, fixed generators). Writes
``split.json`` (the held-out indices), ``denoiser.safetensors`` and ``classifier.safetensors``
(weights stored as float16: 2 MB together).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lib_safe_denoiser.demo.data import ASSETS, load_all, load_split, make_split, save_split
from lib_safe_denoiser.demo.models import DigitClassifier, EDMDenoiser, edm_scalings
from lib_safe_denoiser.demo.weights import save_model

P_MEAN, P_STD = -1.2, 1.2
"""EDM's log-normal training distribution of sigma: most weight where digits take shape."""


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_denoiser(images: torch.Tensor, *, steps: int, batch: int, lr: float, width: int, depth: int,
                   ema_decay: float, gen: torch.Generator, log_every: int = 500) -> EDMDenoiser:
    """EDM training: loss ||F(c_in x, c_noise) - (x0 - c_skip x) / c_out||^2, i.e. lambda(sigma) = 1 / c_out^2."""
    sigma_data = float(images.std())
    model = EDMDenoiser(sigma_data, width=width, depth=depth)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    flat = images.reshape(images.shape[0], -1)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=200)
        x0 = flat[torch.randint(0, flat.shape[0], (batch,), generator=gen)]
        sigma = (P_MEAN + P_STD * torch.randn(batch, generator=gen)).exp()
        x = x0 + sigma.unsqueeze(1) * torch.randn(x0.shape, generator=gen)
        c_skip, c_out, c_in, c_noise = (c.unsqueeze(1) for c in edm_scalings(sigma, sigma_data))
        target = (x0 - c_skip * x) / c_out
        loss = (model.raw(c_in * x, c_noise.squeeze(1)) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - ema_decay)
        if log_every and (step + 1) % log_every == 0:
            print(f"  denoiser step {step + 1}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s",
                  flush=True)
    return ema.eval()


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (background padded) plus a little pixel noise, so the
    classifier also reads slightly imperfect samples of the denoiser."""
    n = images.shape[0]
    padded = nn.functional.pad(images, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(8)).view(n, 1, 8, 1).expand(n, 1, 8, 10)
    shifted = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(8)).view(n, 1, 1, 8).expand(n, 1, 8, 8)
    shifted = shifted.gather(3, cols)
    noise_level = 0.1 * torch.rand(n, 1, 1, 1, generator=gen)
    return shifted + noise_level * torch.randn(shifted.shape, generator=gen)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch: int, lr: float,
                     gen: torch.Generator) -> DigitClassifier:
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = math.ceil(images.shape[0] / batch)
    total = epochs * per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=gen)
        for idx in order.split(batch):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, lr, warmup=50)
            loss = nn.functional.cross_entropy(model(augment(images[idx], gen)), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return model.eval()


def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(dim=1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000, help="denoiser optimiser steps")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--classifier-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the shipped weights used 1 (bitwise results depend on it)")
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: the shipped assets)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    split_file = args.out / "split.json"
    save_split(make_split(load_all().labels.numpy()), split_file)
    train, heldout = load_split(split_file)
    print(f"split: {len(train.labels)} train / {len(heldout.labels)} held-out digits "
          f"(held-out per class {np.bincount(heldout.labels.numpy()).tolist()})")

    start = time.perf_counter()
    classifier = train_classifier(train.images, train.labels, epochs=args.classifier_epochs, batch=64, lr=3e-3,
                                  gen=gen)
    acc = accuracy(classifier, heldout.images, heldout.labels)
    print(f"classifier: held-out accuracy {acc:.2%} ({time.perf_counter() - start:.0f}s)")
    save_model(classifier, args.out / "classifier.safetensors", heldout_accuracy=acc, seed=args.seed,
               epochs=args.classifier_epochs)

    start = time.perf_counter()
    denoiser = train_denoiser(train.images, steps=args.steps, batch=args.batch, lr=args.lr, width=args.width,
                              depth=args.depth, ema_decay=args.ema, gen=gen)
    print(f"denoiser: {args.steps} steps ({time.perf_counter() - start:.0f}s), sigma_data {denoiser.sigma_data:.4f}")
    save_model(denoiser, args.out / "denoiser.safetensors", seed=args.seed, steps=args.steps, batch=args.batch,
               lr=args.lr, ema=args.ema, p_mean=P_MEAN, p_std=P_STD)
    print(f"wrote {split_file.name}, classifier.safetensors, denoiser.safetensors to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
