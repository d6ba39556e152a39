"""CLIP as the judge of images against text concepts: embeddings, cosine similarities, loading.

The image side is differentiable end to end (resize and CLIP normalisation are done in torch), so
the concept steering can take the gradient of a similarity with respect to the latents the images
were decoded from. Text embeddings never need a gradient and are cached per model and concept
list. ``open_clip`` is imported only when a model is loaded, so importing this module stays cheap
and works where open_clip is absent (the bank-only features).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lib_safe_denoiser.concepts.constants import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    RANDOM_WEIGHTS,
    TEXT_CACHE_SIZE,
)
from lib_safe_denoiser.concepts.parsing import ConceptError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's normalisation, used when a model does not carry its own (open_clip sets it per model)."""
QUICKGELU_SUFFIX = "-quickgelu"
"""A model name ending like this runs with QuickGELU, the activation OpenAI's weights were trained with
(open_clip picks it for the ``openai`` tag by itself; a local copy of those weights needs the suffix)."""
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
"""A ``pretrained`` value ending like this is a local checkpoint file, never a tag to download."""


class TextEmbeddingCache:
    """Normalised text embeddings per (model name, pretrained tag or path, concepts, device, dtype).

    Bounded (least recently used dropped first) and safe to share between threads: the WebUI
    runs generations and the bank tab's curation in different threads.
    """

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"the cache size must be >= 1, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


TEXT_CACHE = TextEmbeddingCache()
"""The process-wide cache every judge uses unless given its own."""


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


class ClipJudge:
    """An open_clip-style model (``encode_image``, ``encode_text``) and its tokenizer as a concept judge.

    ``model_name`` and ``pretrained`` identify the weights: they key the text-embedding cache and
    are what infotext records. Construct with ``load_clip`` in practice; tests pass any model.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], *,
                 model_name: str, pretrained: str, image_size: int | tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 text_cache: TextEmbeddingCache | None = None) -> None:
        visual = getattr(model, "visual", model)
        self.model = model.eval().requires_grad_(False)  # gradients flow to the images, never the weights
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self.image_size = _pair(image_size or getattr(visual, "image_size", 224))
        self.mean = tuple(float(v) for v in (mean or getattr(visual, "image_mean", None) or OPENAI_MEAN))
        self.std = tuple(float(v) for v in (std or getattr(visual, "image_std", None) or OPENAI_STD))
        self.text_cache = text_cache if text_cache is not None else TEXT_CACHE

    @property
    def label(self) -> str:
        """How infotext names the judge: ``ViT-B-16/openai``, or the checkpoint's file name."""
        weights = self.pretrained or "random"
        if any(sep in weights for sep in ("/", "\\")):
            weights = Path(weights).name
        return f"{self.model_name}/{weights}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ([B, 3, H, W]) as CLIP input: the whole picture resized (bicubic,
        antialiased when shrinking) to the model's size and normalised. Differentiable.

        The whole image is judged (no centre crop), so content at the edges of a wide generation
        is seen too; CLIP tolerates the slight change of aspect ratio.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images.float() + 1.0) * 0.5
        if tuple(x.shape[-2:]) != self.image_size:
            shrink = x.shape[-2] > self.image_size[0] or x.shape[-1] > self.image_size[1]
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=shrink)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length CLIP embeddings [B, D] (float32) of images in [-1, 1]; differentiable."""
        pixels = self.preprocess(images).to(device=self.device, dtype=self.dtype)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def pil_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images as a [-1, 1] batch at the model's size, the way CLIP was trained to see photos:
        shortest side scaled to fit (bicubic), centre cropped."""
        height, width = self.image_size
        arrays = []
        for img in images:
            img = img.convert("RGB")
            scale = max(width / img.width, height / img.height)
            size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC)
            left, top = (img.width - width) // 2, (img.height - height) // 2
            arrays.append(np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float32))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return batch / 127.5 - 1.0

    # ------------------------------------------------------------------ text
    def text_embeddings(self, concepts: Sequence[str]) -> torch.Tensor:
        """Unit-length text embeddings [K, D] (float32) of ``concepts``, cached."""
        concepts = tuple(concepts)
        if not concepts:
            raise ConceptError("no concepts to embed")
        key = (self.model_name, self.pretrained, concepts, str(self.device), str(self.dtype))
        return self.text_cache.get(key, lambda: self._embed_text(concepts))

    def _embed_text(self, concepts: tuple[str, ...]) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.tokenizer(list(concepts)).to(self.device)
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def similarities(self, images: torch.Tensor, concepts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity [B, K] of each image (in [-1, 1]) to each concept; differentiable in the images."""
        return self.image_embeddings(images) @ self.text_embeddings(concepts).T


# ---------------------------------------------------------------------------------- loading
def is_checkpoint_path(pretrained: str) -> bool:
    """Whether ``pretrained`` names a local file rather than an open_clip tag."""
    return pretrained.lower().endswith(CHECKPOINT_SUFFIXES) or any(sep in pretrained for sep in ("/", "\\"))


def load_clip(model_name: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED, *,
              device: torch.device | str = "cpu", precision: str = "fp32", cache_dir: str | None = None,
              text_cache: TextEmbeddingCache | None = None) -> ClipJudge:
    """A judge from open_clip: ``pretrained`` is a tag (downloaded once, then read from the cache;
    needs network the first time), a local checkpoint file (works offline), or ``RANDOM_WEIGHTS``.
    For a local copy of OpenAI's weights, name the model with ``QUICKGELU_SUFFIX`` (``ViT-B-16-quickgelu``).

    ``ConceptError`` says what is wrong: an unknown model or tag (listing the choices), a missing
    file, or a download that failed (no network: give a local checkpoint path instead).
    """
    try:
        import open_clip
    except ImportError as e:
        raise ConceptError(f"text concepts need the open_clip_torch package ({e}); install it with "
                           "'pip install open_clip_torch' in the WebUI's environment") from e
    model_name = (model_name or "").strip()
    pretrained = (pretrained or "").strip()
    if model_name not in open_clip.list_models() and model_name.replace("/", "-") in open_clip.list_models():
        model_name = model_name.replace("/", "-")  # OpenAI's spelling, "ViT-B/16"
    quick_gelu = False
    if model_name not in open_clip.list_models() and model_name.endswith(QUICKGELU_SUFFIX):
        model_name, quick_gelu = model_name[:-len(QUICKGELU_SUFFIX)], True  # older open_clip lacks those configs
    if model_name not in open_clip.list_models():
        near = [m for m in open_clip.list_models() if model_name.lower().replace("/", "-") in m.lower()][:8]
        hint = f"; did you mean {', '.join(near)}?" if near else "; e.g. ViT-B-16, ViT-B-32, ViT-L-14"
        raise ConceptError(f"unknown CLIP model {model_name!r}{hint}")
    if pretrained and is_checkpoint_path(pretrained):
        path = Path(os.path.expanduser(pretrained))
        if not path.is_file():
            raise ConceptError(f"CLIP checkpoint not found: {path}")
        pretrained = str(path)
    elif pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ConceptError(f"CLIP model {model_name!r} has no pretrained weights {pretrained!r}; "
                           f"tags: {tags}; or give the path of a local checkpoint file")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None, precision=precision,
                                       device=device, cache_dir=cache_dir, force_quick_gelu=quick_gelu)
    except Exception as e:  # downloads, unpickling, missing keys and shape mismatches all fail differently
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if pretrained and is_checkpoint_path(pretrained):
            raise ConceptError(f"could not load the CLIP checkpoint {pretrained} as {model_name!r} ({detail}); "
                               "it must be an open_clip checkpoint of that model") from e
        raise ConceptError(f"could not load CLIP {model_name!r} with weights {pretrained or 'random'!r} ({detail}); "
                           "without network, download the weights elsewhere and give the local file path") from e
    tokenizer = open_clip.get_tokenizer(model_name)
    name = model_name + (QUICKGELU_SUFFIX if quick_gelu else "")
    return ClipJudge(model, tokenizer, model_name=name, pretrained=pretrained or RANDOM_WEIGHTS,
                     text_cache=text_cache)


@dataclass(frozen=True)
class JudgeKey:
    model_name: str
    pretrained: str
    device: str
    precision: str


class JudgeLoader:
    """Keeps the last loaded judge, so generations and curation with the same settings load it once.

    Only one is kept: a ViT-B/16 is ~600 MB in fp32, and switching models is rare. Thread-safe;
    ``load`` is the loading function (``load_clip``; tests pass a random-weight one).
    """

    def __init__(self, load: Callable[..., ClipJudge] = load_clip) -> None:
        self._load = load
        self._key: JudgeKey | None = None
        self._judge: ClipJudge | None = None
        self._lock = threading.Lock()

    def get(self, model_name: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED, *,
            device: torch.device | str = "cpu", precision: str = "fp32") -> ClipJudge:
        key = JudgeKey(model_name, pretrained, str(device), precision)
        with self._lock:
            if self._judge is None or self._key != key:
                self._judge = None  # release the old model before loading the next
                self._judge = self._load(model_name, pretrained, device=device, precision=precision)
                self._key = key
            return self._judge

    def release(self) -> None:
        with self._lock:
            self._judge, self._key = None, None
