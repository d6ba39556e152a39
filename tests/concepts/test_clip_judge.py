"""The CLIP judge: differentiable preprocessing, the text-embedding cache, loading and its errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lib_safe_denoiser.concepts.clip_judge import ClipJudge, JudgeLoader, TextEmbeddingCache, load_clip
from lib_safe_denoiser.concepts.parsing import ConceptError
from tests.concepts.tiny_models import TINY_CLIP


def test_text_embeddings_are_cached_per_model_and_concept_list(judge):
    cache = TextEmbeddingCache(size=2)
    mine = ClipJudge(judge.model, judge.tokenizer, model_name=judge.model_name, pretrained="", text_cache=cache)
    first = mine.text_embeddings(["nudity", "violence"])
    again = mine.text_embeddings(("nudity", "violence"))
    assert again is first and (cache.hits, cache.misses) == (1, 1)
    assert torch.allclose(first.norm(dim=1), torch.ones(2))
    mine.text_embeddings(["violence", "nudity"])  # another list (order matters to the rows)
    other = ClipJudge(judge.model, judge.tokenizer, model_name=judge.model_name, pretrained="/x/other.pt",
                      text_cache=cache)
    other.text_embeddings(["nudity", "violence"])  # other weights: never the first model's embeddings
    assert (cache.hits, cache.misses) == (1, 3)
    assert len(cache) == 2  # bounded: the oldest entry went
    mine.text_embeddings(["nudity", "violence"])
    assert cache.misses == 4


def test_preprocessing_is_differentiable_and_normalised(judge):
    images = (torch.rand(2, 3, 48, 40) * 2 - 1).requires_grad_(True)
    pixels = judge.preprocess(images)
    assert pixels.shape == (2, 3, *judge.image_size)
    (grad,) = torch.autograd.grad(judge.image_embeddings(images)[:, 0].sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    grey = judge.preprocess(torch.zeros(1, 3, 32, 32))  # mid-grey: (0.5 - mean) / std per channel
    expected = (0.5 - torch.tensor(judge.mean)) / torch.tensor(judge.std)
    assert torch.allclose(grey[0, :, 0, 0], expected, atol=1e-6)


def test_pil_batch_scales_crops_and_maps_pixels_to_minus_one_one(judge):
    img = Image.new("RGB", judge.image_size[::-1], (255, 0, 128))
    batch = judge.pil_batch([img, img.resize((80, 40))])
    assert batch.shape == (2, 3, *judge.image_size)
    assert torch.allclose(batch[:, :, 0, 0], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]).expand(2, 3), atol=1e-6)


def test_similarities_are_cosines(judge):
    sims = judge.similarities(torch.rand(3, 3, 32, 32) * 2 - 1, ["a", "b"])
    assert sims.shape == (3, 2) and (sims.abs() <= 1 + 1e-6).all()


def test_load_clip_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConceptError, match="unknown CLIP model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", "")
    with pytest.raises(ConceptError, match="has no pretrained weights 'no-such-tag'.*tags: openai"):
        load_clip("ViT-B-16", "no-such-tag")
    with pytest.raises(ConceptError, match="CLIP checkpoint not found"):
        load_clip(TINY_CLIP, str(tmp_path / "missing.safetensors"))
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ConceptError, match="could not load the CLIP checkpoint .*broken.bin as .tiny_clip. .Weights"):
        load_clip(TINY_CLIP, str(broken))


def test_a_local_checkpoint_loads_offline(judge, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(judge.model.state_dict(), path)
    loaded = load_clip(TINY_CLIP, str(path))
    assert loaded.label == f"{TINY_CLIP}/tiny.pt"
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(loaded.similarities(images, ["x"]), judge.similarities(images, ["x"]), atol=1e-5)


def test_the_loader_keeps_the_last_judge(judge):
    calls = []

    def load(name, pretrained, **kwargs):
        calls.append((name, pretrained))
        return judge

    loader = JudgeLoader(load)
    assert loader.get(TINY_CLIP, "") is loader.get(TINY_CLIP, "")
    loader.get(TINY_CLIP, "other")
    loader.get(TINY_CLIP, "")
    assert calls == [(TINY_CLIP, ""), (TINY_CLIP, "other"), (TINY_CLIP, "")]


def test_the_quickgelu_suffix_gives_openai_s_activation_where_open_clip_lacks_the_config():
    quick = load_clip(TINY_CLIP + "-quickgelu", "")
    assert quick.model_name == f"{TINY_CLIP}-quickgelu"
    assert any(type(m).__name__ == "QuickGELU" for m in quick.model.modules())
    assert not any(type(m).__name__ == "QuickGELU" for m in load_clip(TINY_CLIP, "").model.modules())
