"""Concept tests: a tiny random-weight open_clip model and a small conv decoder (tests.concepts.tiny_models)."""

from __future__ import annotations

import pytest
import torch

from lib_safe_denoiser.concepts.clip_judge import ClipJudge
from tests.concepts.tiny_models import LATENT_CHANNELS, TinyDecoder, tiny_decoder, tiny_judge


@pytest.fixture(scope="session")
def judge() -> ClipJudge:
    return tiny_judge()


@pytest.fixture(scope="session")
def decoder() -> TinyDecoder:
    return tiny_decoder()


@pytest.fixture
def latents() -> torch.Tensor:
    return torch.randn(6, LATENT_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(2))
