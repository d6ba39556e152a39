"""The standalone digits demo: shipped weights, the sampler, the correction on real samples, the CLI, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lib_safe_denoiser import SafeDenoiser
from lib_safe_denoiser.cli import main
from lib_safe_denoiser.demo import grid
from lib_safe_denoiser.demo.data import IMAGE_SHAPE, load_split
from lib_safe_denoiser.demo.experiment import (
    MODE_CONFIGS,
    generate,
    negation_bank,
    reference_bank,
    varied_bank,
)
from lib_safe_denoiser.demo.metrics import (
    class_histogram,
    classify,
    frechet_distance,
    total_variation,
    without_class,
)
from lib_safe_denoiser.demo.sampler import sample
from lib_safe_denoiser.demo.weights import (
    CLASSIFIER_FILE,
    DENOISER_FILE,
    load_classifier,
    load_denoiser,
    read_metadata,
)


@pytest.fixture(scope="module")
def split():
    return load_split()


@pytest.fixture(scope="module")
def denoiser():
    return load_denoiser()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_weights_load_and_are_small(denoiser, classifier, split):
    assert DENOISER_FILE.stat().st_size + CLASSIFIER_FILE.stat().st_size < 2_000_000
    meta = read_metadata(DENOISER_FILE)
    assert meta["hparams"]["sigma_data"] == pytest.approx(0.75, abs=0.02)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in denoiser.parameters())
    train, heldout = split
    assert len(train.labels) + len(heldout.labels) == 1797 and len(heldout.labels) == 599
    labels, _ = classify(classifier, heldout.images)
    assert float((labels == heldout.labels).float().mean()) > 0.97
    # a denoiser of unseen digits: at sigma 0.5 it removes most of the noise (measured: 80%), and far
    # better than the best constant guess, the mean image (which "removes" -18%)
    x0 = heldout.images[:256]
    noisy = x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((denoiser(noisy, 0.5) - x0).pow(2).mean()) < 0.3 * 0.5**2


def test_sampler_shapes_determinism_and_hook(denoiser):
    noise = torch.randn((12, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(1))
    a = sample(denoiser, noise, steps=6)
    assert a.shape == noise.shape and a.dtype == torch.float32 and bool(torch.isfinite(a).all())
    assert torch.equal(a, sample(denoiser, noise, steps=6))
    assert torch.allclose(a, sample(denoiser, noise, steps=6, batch_size=5), atol=1e-5)
    assert not torch.allclose(a, sample(denoiser, noise * 0.5, steps=6))

    seen = []

    def identity(x, sigma, x0):
        seen.append((tuple(x.shape), sigma, tuple(x0.shape)))
        return x0

    assert torch.equal(a, sample(denoiser, noise, steps=6, correct=identity))
    sigmas = [s for _, s, _ in seen]
    assert len(seen) == 6 and sigmas == sorted(sigmas, reverse=True) and sigmas[0] == pytest.approx(10.0)
    assert all(xs == (12, *IMAGE_SHAPE) and x0s == xs for xs, _, x0s in seen)
    heun = sample(denoiser, noise, steps=6, heun=True)
    assert heun.shape == noise.shape and bool(torch.isfinite(heun).all())


def test_odds_correction_removes_the_negated_digit(denoiser, classifier, split):
    train, _ = split
    digit = 7
    safe = SafeDenoiser(negation_bank(train, digit, 60, seed=0), reference_bank(train, digit), MODE_CONFIGS["odds"])
    noise = torch.randn((800, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(0))
    base = generate(denoiser, classifier, noise, steps=12, safe=None)
    fixed = generate(denoiser, classifier, noise, steps=12, safe=safe)
    before = int((base.labels == digit).sum())
    after = int((fixed.labels == digit).sum())
    assert before >= 40  # about a tenth of the samples are 7s
    assert after <= before // 8
    assert 0 < fixed.acted_share < 0.5 and base.acted_share == 0
    # samples far from any 7 are left alone: most samples keep their class
    kept = (base.labels != digit) & (fixed.labels == base.labels)
    assert float(kept.float().sum()) / float((base.labels != digit).sum()) > 0.9


def test_model_made_variations_of_a_bank_stay_its_digit(denoiser, classifier, split):
    """img2img of each bank image at sigma 0.5: new images (none equals its source) that the classifier
    still reads as the bank's digit; the bank itself comes first, and a seed repeats the result."""
    _, heldout = split
    bank = negation_bank(heldout, 3, 30, seed=0)
    assert varied_bank(denoiser, bank, 0, 1.0, steps=12, seed=0) is bank
    varied = varied_bank(denoiser, bank, 2, 0.5, steps=32, seed=5)
    assert varied.shape == (90, *IMAGE_SHAPE) and torch.equal(varied[:30], bank)
    assert torch.equal(varied, varied_bank(denoiser, bank, 2, 0.5, steps=32, seed=5))
    new = varied[30:]
    assert float((new - bank.repeat(2, 1, 1, 1)).flatten(1).norm(dim=1).min()) > 0.3
    labels, _ = classify(classifier, new)
    assert float((labels == 3).float().mean()) >= 0.85  # the bank itself: 0.97


def test_demo_cli_writes_grid_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--samples", "60", "--steps", "5", "--digit", "3", "--seed", "2",
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "samples read as 3" in printed and "grid.png" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["digit"] == 3 and metrics["samples"] == 60 and metrics["steps"] == 5 and metrics["seed"] == 2
    assert metrics["mode"] == "odds" and metrics["config"]["strength"] == MODE_CONFIGS["odds"].strength
    assert metrics["negation_set"] == {"source": "train", "size": 60, "seed": 0}
    for run in ("uncorrected", "corrected"):
        m = metrics[run]
        assert sum(m["class_histogram"]) == pytest.approx(1.0, abs=1e-4)
        assert m["negated_share"] == pytest.approx(m["class_histogram"][3], abs=1e-5)
        assert m["finite"] and m["frechet_distance"] > 0
    assert metrics["uncorrected"]["histogram_tv"] >= 0
    cell = 8 * grid.SCALE + 2 * grid.GAP
    with Image.open(out / "grid.png") as img:  # 60 samples: 6 rows of 10; two or four panels side by side
        assert img.format == "PNG" and img.height == 6 * cell + grid.TITLE_HEIGHT + 2 * grid.MARGIN
        assert img.width in (2 * 10 * cell + 3 * grid.MARGIN, 4 * 10 * cell + 5 * grid.MARGIN)


def test_demo_cli_modes_and_errors(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["demo", "--out", str(out), "--samples", "8", "--steps", "3", "--mode", "paper",
                 "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["reference_set_size"] == 0
    capsys.readouterr()
    # the held-out set has 58 images of an 8: asking for 60 is a one-line error, nothing written
    rc = main(["demo", "--out", str(tmp_path / "bad"), "--digit", "8", "--bank-source", "heldout",
               "--samples", "4", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "58" in err
    assert not (tmp_path / "bad").exists()
    for argv in (["--digit", "10"], ["--samples", "0"], ["--mode", "none"]):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--out", str(tmp_path / "x"), *argv])
        assert exc.value.code == 2


def test_frechet_distance_against_direct_formulas():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(500, 6)))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with the sample moments
    x, y = rng.normal(1.0, 2.0, size=(400, 1)), rng.normal(-0.5, 0.5, size=(300, 1))
    direct = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(direct, rel=1e-9)
    # general: ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) with scipy's matrix square root
    from scipy.linalg import sqrtm

    b = torch.from_numpy(rng.normal(size=(700, 6)) @ rng.normal(size=(6, 6)) + 0.3)
    fa, fb = a.numpy(), b.numpy()
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    direct = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-6)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(frechet_distance(b, a), rel=1e-4)


def test_histogram_and_total_variation():
    labels = torch.tensor([0, 0, 1, 7, 7, 7, 9, 9])
    hist = class_histogram(labels)
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    assert hist[7] == pytest.approx(3 / 8) and hist[2] == 0
    safe = without_class(hist, 7)
    assert safe[7] == 0 and safe.sum() == pytest.approx(1.0) and safe[0] == pytest.approx(2 / 5)
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.2, 0.3, 0.5])
    assert total_variation(p, q) == pytest.approx(0.5)
    assert total_variation(p, q) == pytest.approx(max(abs(p[list(s)].sum() - q[list(s)].sum())
                                                      for s in ([0], [1], [2], [0, 1], [0, 2], [1, 2])))
    assert total_variation(hist, hist) == 0
