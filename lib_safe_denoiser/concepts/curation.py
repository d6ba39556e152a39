"""Curating a negation bank with CLIP: score candidate images against text concepts, keep the
ones that show them, and flag pictures CLIP sees as the same.

A bank works best when it holds what it should negate and little else; scoring a folder of
candidates against "nudity" (say) sorts it for a person to check. Bad files are reported by name
and the good ones proceed, as everywhere in the bank code (the same loaders read them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lib_safe_denoiser.banks.images import BadImageError, load_image
from lib_safe_denoiser.banks.inputs import SkippedFile, source_label
from lib_safe_denoiser.concepts.clip_judge import ClipJudge
from lib_safe_denoiser.concepts.constants import CURATION_BATCH, DEFAULT_CLIP_DUPLICATE_COSINE
from lib_safe_denoiser.concepts.parsing import ConceptError, parse_concepts


@dataclass(frozen=True)
class ImageScore:
    """One candidate: its name, where its bytes are, and how like each concept CLIP finds it."""

    name: str
    source: Any
    """What the bank store reads (a path or bytes), as given."""
    similarities: tuple[float, ...]

    @property
    def score(self) -> float:
        """The highest concept similarity: what the threshold is compared with."""
        return max(self.similarities)

    def closest(self, concepts: Sequence[str]) -> str:
        return concepts[self.similarities.index(self.score)]


@dataclass(frozen=True)
class CurationReport:
    """Scores of a batch, in input order; bad inputs in ``skipped``; ``embeddings`` row i is scores[i]'s."""

    concepts: tuple[str, ...]
    judge: str
    scores: list[ImageScore] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    embeddings: torch.Tensor | None = None

    def above(self, threshold: float) -> list[ImageScore]:
        """The images whose score is strictly above ``threshold``, in input order."""
        return [s for s in self.scores if s.score > threshold]

    def near_duplicates(self, min_cosine: float = DEFAULT_CLIP_DUPLICATE_COSINE) -> list[tuple[str, str, float]]:
        """(image, looks like, cosine) for pairs of images whose CLIP embeddings' cosine reaches ``min_cosine``."""
        if self.embeddings is None:
            return []
        return clip_near_duplicates(self.embeddings, [s.name for s in self.scores], min_cosine)


def _name_and_source(item: Any, index: int) -> tuple[str, Any]:
    if isinstance(item, tuple) and len(item) == 2:
        return str(item[0]), item[1]
    return source_label(item, index), item


def score_images(judge: ClipJudge, images: Sequence[Any], concepts: str | Sequence[str], *,
                 batch_size: int = CURATION_BATCH) -> CurationReport:
    """Score every image (a path, bytes, PIL image or ``(name, source)``) against ``concepts``.

    Images that cannot be read are listed in ``skipped`` with the reason; the others are scored.
    """
    concept_list = parse_concepts(concepts)
    if batch_size < 1:
        raise ConceptError(f"batch_size must be >= 1, got {batch_size}")
    text = judge.text_embeddings(concept_list)
    scores: list[ImageScore] = []
    skipped: list[SkippedFile] = []
    embeddings: list[torch.Tensor] = []
    pending: list[tuple[str, Any, Any]] = []

    def flush() -> None:
        if not pending:
            return
        with torch.no_grad():
            emb = judge.image_embeddings(judge.pil_batch([img for _, _, img in pending]))
        sims = (emb @ text.T).cpu()
        for (name, source, _), row in zip(pending, sims, strict=True):
            scores.append(ImageScore(name, source, tuple(float(v) for v in row)))
        embeddings.append(emb.cpu())
        pending.clear()

    for index, item in enumerate(images):
        name, source = _name_and_source(item, index)
        try:
            img = load_image(source, name=name)
        except BadImageError as e:
            skipped.append(SkippedFile(e.name, e.reason))
            continue
        pending.append((name, source, img))
        if len(pending) >= batch_size:
            flush()
    flush()
    return CurationReport(concept_list, judge.label, scores, skipped,
                          torch.cat(embeddings) if embeddings else None)


def clip_near_duplicates(embeddings: torch.Tensor, names: Sequence[str],
                         min_cosine: float = DEFAULT_CLIP_DUPLICATE_COSINE) -> list[tuple[str, str, float]]:
    """Pairs (later image, earlier image it looks like, cosine) at or above ``min_cosine``, most alike first.

    Unlike the byte-level and dHash checks of the bank store, CLIP sees crops, flips and re-renders
    of the same scene as alike; a flag is a hint for a person, never a reason to drop an image.
    """
    if not -1.0 <= min_cosine <= 1.0:
        raise ConceptError(f"the near-duplicate cosine must lie in [-1, 1], got {min_cosine}")
    if embeddings.shape[0] != len(names):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(names)} names")
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    cos = unit @ unit.T
    later, earlier = torch.tril_indices(len(names), len(names), offset=-1)
    values = cos[later, earlier]
    keep = values >= min_cosine
    pairs = [(names[int(a)], names[int(b)], float(v)) for a, b, v in
             zip(later[keep], earlier[keep], values[keep], strict=True)]
    return sorted(pairs, key=lambda p: -p[2])
