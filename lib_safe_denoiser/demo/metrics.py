"""What the demo and the benchmark measure on samples: class shares and a Frechet distance."""

from __future__ import annotations

import numpy as np
import torch

from lib_safe_denoiser.demo.data import N_CLASSES
from lib_safe_denoiser.demo.models import DigitClassifier

BATCH = 4096


def classify(classifier: DigitClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [N], penultimate features [N, F]) of images [N, 1, 8, 8], on the CPU whatever the devices."""
    labels, feats = [], []
    device = next(classifier.parameters()).device
    with torch.no_grad():
        for part in images.split(BATCH):
            f = classifier.features(part.to(device))
            feats.append(f.cpu())
            labels.append(classifier.head(f).argmax(dim=1).cpu())
    return torch.cat(labels), torch.cat(feats)


def class_histogram(labels: torch.Tensor) -> np.ndarray:
    """Share of each class, summing to 1."""
    counts = np.bincount(labels.numpy(), minlength=N_CLASSES).astype(np.float64)
    return counts / max(1.0, counts.sum())


def without_class(hist: np.ndarray, digit: int) -> np.ndarray:
    """The histogram with ``digit`` removed and the rest renormalised: the ideal safe histogram."""
    safe = hist.copy()
    safe[digit] = 0.0
    return safe / safe.sum()


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets [N, F].

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric matrix S_a^(1/2) S_b S_a^(1/2), which avoids a non-symmetric matrix square root.
    """
    fa, fb = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
