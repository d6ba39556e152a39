"""A job's passes, failures and infotext, and the factory that builds and keeps its denoisers."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig
from lib_safe_denoiser.banks.model_samples import MODEL_SAMPLES_TAG
from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.banks.variations import VARIATIONS_TAG
from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.generation.infotext import KEY_ACTED, KEY_ERROR
from lib_safe_denoiser.generation.job import DenoiserFactory, Job

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
LATENT = (4, 2, 2)
"""Latents of 16x16-pixel images: 4 channels, 2x2."""


class Encoder:
    """8x8 average pooling and a fixed 3 -> ``channels`` mix; records the images of each call."""

    def __init__(self, channels: int = 4) -> None:
        self.mix = torch.randn(channels, 3, generator=torch.Generator().manual_seed(0))
        self.images = 0
        self.calls: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images += pixels.shape[0]
        self.calls.append(pixels.shape[0])
        return torch.einsum("cd,ndhw->nchw", self.mix, torch.nn.functional.avg_pool2d(pixels, 8))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Banks "a" (3 images), "b" (2 other images), "ref" (4 more) and "five" (5 more)."""
    root = tmp_path_factory.mktemp("store")
    s = BankStore(root / "data")
    rng = np.random.default_rng(0)
    for name, count in (("a", 3), ("b", 2), ("ref", 4), ("five", 5)):
        folder = root / name
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        s.add_folder(name, folder)
    return s


def job(store: BankStore, bank: str = "a", **fields) -> Job:
    args = SafeDenoiserArgs(enabled=True, bank=bank, preset="custom", **{"mode": "constant", **fields})
    reference = store.get(fields["reference_bank"]) if fields.get("mode") == "odds" else None
    return Job(args, tuple(store.get(name) for name in args.banks), reference)


def build(factory: DenoiserFactory, j: Job, encoder: Encoder, vae: str = "vae-1", shape=LATENT) -> SafeDenoiser:
    return factory.build(j, alphas_cumprod=ALPHAS, encoder=encoder, vae_id=vae, latent_shape=shape, batch_size=2)


def test_a_new_image_starts_a_new_trace_a_hires_pass_continues_it():
    j = Job(SafeDenoiserArgs(bank="x"), (), None)
    safe = SafeDenoiser(torch.zeros(1, *LATENT), None, SafeDenoiserConfig(mode="constant"))
    j.start_pass(safe, new_image=True)
    first = j.trace
    j.steering.capture(torch.zeros(2, *LATENT), torch.ones(2))
    j.steering.steer_combined(torch.ones(1, *LATENT))
    j.start_pass(safe, new_image=False)
    assert j.trace is first and j.steering.trace is first and len(first.steps) == 1
    j.start_pass(None, new_image=False)
    assert j.steering is None and j.trace is first, "an unsteered hires pass keeps the first pass's record"
    j.start_pass(safe, new_image=True)
    assert j.trace is not first and j.trace.steps == [] and j.steering.safe is safe


def test_the_first_failure_is_kept_and_reported(store, caplog):
    j = job(store)
    with caplog.at_level(logging.ERROR, logger="lib_safe_denoiser.generation.job"):
        j.fail("bank unreadable")
        j.fail("steering failed: a consequence")
    assert j.error == "bank unreadable"
    assert [r.getMessage() for r in caplog.records] == ["safe denoiser: bank unreadable"]
    assert j.infotext()[KEY_ERROR] == "bank unreadable"


def test_infotext_reports_acted_steps_only_once_there_are_steps(store):
    j = job(store)
    assert KEY_ACTED not in j.infotext() and KEY_ERROR not in j.infotext()
    safe = SafeDenoiser(torch.zeros(1, *LATENT), None, SafeDenoiserConfig(mode="constant", sigma_min=2.0))
    j.start_pass(safe, new_image=True)
    for sigma in (3.0, 1.0):
        j.steering.capture(torch.ones(2, *LATENT), torch.full((2,), sigma))
        j.steering.steer_combined(torch.ones(1, *LATENT))
    assert j.infotext()[KEY_ACTED] == "1/2"


def test_factory_builds_from_the_store_and_keeps_the_denoiser(store):
    factory, encoder = DenoiserFactory(store), Encoder()
    j = job(store, strength=0.7, window_end=1.0)
    safe = build(factory, j, encoder)
    assert safe.n_negation == 3 and safe.n_reference == 0 and safe.shape == LATENT
    assert safe.config == j.args.to_config(ALPHAS)
    lat = store.latents("a", encoder=encoder, vae_id="vae-1", latent_hw=(2, 2))
    safe.correct(lat, 1.0, lat)  # each bank latent is its own nearest bank entry, at distance 0
    assert safe.last_diagnostics.nearest_index[:, 0].tolist() == [0, 1, 2]
    assert safe.last_diagnostics.nearest_distance[:, 0].max() < 1e-3
    encoded = encoder.images
    assert build(factory, job(store, strength=0.7, window_end=1.0), encoder) is safe, "same bank, VAE, size, config"
    assert encoder.images == encoded
    for other in (lambda: build(factory, j, encoder, vae="vae-2"), lambda: build(factory, j, encoder, shape=(4, 3, 2)),
                  lambda: build(factory, job(store, strength=0.8, window_end=1.0), encoder)):
        assert build(factory, j, encoder) is safe, "still kept"
        assert other() is not safe


def test_odds_jobs_get_their_reference_bank(store):
    factory, encoder = DenoiserFactory(store), Encoder()
    j = job(store, mode="odds", reference_bank="ref")
    safe = build(factory, j, encoder)
    assert safe.n_negation == 3 and safe.n_reference == 4
    assert build(factory, job(store, mode="odds", reference_bank="b"), encoder) is not safe


def test_a_reference_of_model_samples_is_cleaned_against_the_jobs_bank(tmp_path):
    """20 samples, 3 of them the negation bank's images slightly changed: with the prior 0.1 the job drops
    the 6 (3 x prior) most bank-like, those 3 among them; untagged, the same bank is used whole."""
    rng = np.random.default_rng(1)
    bank_images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    near = [np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8) for img in bank_images]
    others = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(17)]
    store = BankStore(tmp_path / "data")
    for name, images in (("neg", bank_images), ("samples", near + others), ("few", others[:5])):
        folder = tmp_path / name
        folder.mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / f"{i:02d}.png")
        store.add_folder(name, folder, tags=[MODEL_SAMPLES_TAG])
    factory, encoder = DenoiserFactory(store), Encoder()
    odds = {"mode": "odds", "reference_bank": "samples", "prior": 0.1}
    safe = build(factory, job(store, "neg", **odds), encoder)
    assert safe.n_reference == 14
    kept = safe._reference.on(torch.device("cpu"))[0]
    lat = store.latents("samples", encoder=encoder, vae_id="vae-1", latent_hw=(2, 2)).flatten(1)
    assert all(not torch.isclose(kept, lat[i]).all(dim=1).any() for i in range(3)), "the bank-like samples went"
    store.update("samples", tags=[])
    assert build(factory, job(store, "neg", **odds), encoder).n_reference == 20
    with pytest.raises(ValueError, match=r"'few' holds model samples .* more than 5 of them, it has 5"):
        build(factory, job(store, "neg", **{**odds, "reference_bank": "few"}), encoder)


def test_factory_keeps_the_most_recently_used(store):
    factory, encoder = DenoiserFactory(store, capacity=2), Encoder()
    a, b, r = (build(factory, job(store, bank), encoder) for bank in ("a", "b", "ref"))
    assert (a.n_negation, b.n_negation, r.n_negation) == (3, 2, 4)
    assert build(factory, job(store, "ref"), encoder) is r
    assert build(factory, job(store, "b"), encoder) is b, "b was used after a"
    assert build(factory, job(store, "a"), encoder) is not a, "a, the least recently used, was dropped"
    assert build(factory, job(store, "b"), encoder) is b, "using b again kept it"
    factory.clear()
    assert build(factory, job(store, "b"), encoder) is not b


def test_a_bank_for_another_model_family_is_refused(store):
    factory = DenoiserFactory(store)
    with pytest.raises(ValueError, match=r"bank 'a' encodes to 3-channel latents but this model samples 4-channel"):
        build(factory, job(store), Encoder(channels=3), vae="three-channel-vae")


def test_the_progress_of_encoding_is_reported(store):
    seen = []
    factory = DenoiserFactory(store)
    factory.build(job(store, "b"), alphas_cumprod=ALPHAS, encoder=Encoder(), vae_id="vae-progress",
                  latent_shape=LATENT, batch_size=1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)], "one image per call, as asked"


def test_factory_defaults_keep_two_denoisers_and_encode_four_images_per_call(store):
    factory, encoder = DenoiserFactory(store), Encoder()
    factory.build(job(store, "five"), alphas_cumprod=ALPHAS, encoder=encoder, vae_id="vae-defaults",
                  latent_shape=LATENT)
    assert encoder.calls == [4, 1]
    first = build(factory, job(store, "a"), encoder)
    build(factory, job(store, "b"), encoder)
    build(factory, job(store, "ref"), encoder)
    assert build(factory, job(store, "a"), encoder) is not first, "a third denoiser pushed out the oldest"


def test_paper_jobs_get_the_papers_config(store):
    factory = DenoiserFactory(store)
    j = Job(SafeDenoiserArgs(enabled=True, bank="a").with_preset("a person / memorised image"), (store.get("a"),), None)
    safe = build(factory, j, Encoder())
    assert safe.config.mode == "paper" and safe.config.scale == 0.69 and math.isinf(safe.config.gate_margin)


def test_model_samples_are_cleaned_against_the_given_images_not_their_variations(tmp_path):
    """Variations stray into neighbouring concepts: cleaning the reference against a bank tagged
    ``variations`` would thin those neighbours out of it. 20 samples: 3 near the negation bank's images,
    3 near the variations bank's, 14 others half-way to the given images (so that, of the samples far
    from every given image, the variations' neighbours are the farthest); the prior 0.1 drops 6."""
    rng = np.random.default_rng(1)

    def noise_images(n):
        return [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]

    def near(images, spread=3):
        return [np.clip(i.astype(int) + rng.integers(-spread, spread + 1, i.shape), 0, 255).astype(np.uint8)
                for i in images]

    given, varied = noise_images(3), noise_images(3)
    others = near([given[i % 3] for i in range(14)], spread=90)
    store = BankStore(tmp_path / "data")
    for name, images, tags in (("neg", given, []), ("neg-var", varied, [VARIATIONS_TAG]),
                               ("samples", near(given) + near(varied) + others, [MODEL_SAMPLES_TAG])):
        folder = tmp_path / name
        folder.mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / f"{i:02d}.png")
        store.add_folder(name, folder, tags=tags)
    factory, encoder = DenoiserFactory(store), Encoder()
    lat = store.latents("samples", encoder=encoder, vae_id="vae-1", latent_hw=(2, 2)).flatten(1)

    def kept_rows() -> set[int]:
        odds = {"mode": "odds", "reference_bank": "samples", "prior": 0.1}
        safe = build(factory, job(store, "neg, neg-var", **odds), encoder)
        kept = safe._reference.on(torch.device("cpu"))[0]
        return {i for i in range(lat.shape[0]) if torch.isclose(kept, lat[i]).all(dim=1).any()}

    rows = kept_rows()
    assert len(rows) == 14 and not rows & {0, 1, 2}, "the samples like the given images went"
    assert {3, 4, 5} <= rows, "the samples like the variations stayed"
    store.update("neg-var", tags=[])  # an ordinary second bank: cleaned against as well
    assert not kept_rows() & {0, 1, 2, 3, 4, 5}
