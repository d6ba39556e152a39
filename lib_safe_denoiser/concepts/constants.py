"""Every default and limit of the concept steering and CLIP curation, in one place.

The method's numbers follow the official SFW sampler (Carvajal Reyes, Fontbona, Tobar 2025): a
ViT-B/16 CLIP judge with OpenAI's weights, threshold eta 0.23, step gamma 75, and only the highest
concept similarity per image in the log (their ``top_k`` 1).
"""

from __future__ import annotations

DEFAULT_CLIP_MODEL = "ViT-B-16"
"""open_clip's name for the architecture the official sampler loads as OpenAI CLIP "ViT-B/16"."""
DEFAULT_CLIP_PRETRAINED = "openai"
"""open_clip pretrained tag (downloaded on first use), or a local checkpoint path (works offline)."""
RANDOM_WEIGHTS = ""
"""The pretrained value meaning "no weights": a randomly initialised judge, for tests and plumbing checks."""

DEFAULT_ETA = 0.23
"""A sample is steered when its highest concept cosine similarity exceeds this."""
DEFAULT_GAMMA = 75.0
"""Step size of x0' = x0 - gamma * grad log p, in the model's (scaled) latent units."""
DEFAULT_TOP_K = 1
"""How many of a sample's highest concept similarities enter sum log p (the official default, 1)."""
LOG_FLOOR = 1e-4
"""Similarities are clamped to at least this before the log: a concept the image is not like at all
(cosine <= 0) then pulls with zero gradient instead of a NaN."""

MAX_CONCEPTS = 16
"""Concepts per generation: each costs a text embedding (cached) and one cosine per corrected step."""
MAX_CONCEPT_CHARS = 200
"""Characters per concept: CLIP reads at most 77 tokens, well under this for any phrase."""
MAX_CONCEPTS_TEXT = MAX_CONCEPTS * (MAX_CONCEPT_CHARS + 2)
"""Longest concepts text accepted before it is even split (a pasted novel is refused early)."""

TEXT_CACHE_SIZE = 64
"""Concept lists whose text embeddings are kept (per model); the oldest is dropped beyond this."""

DEFAULT_CHUNK_SIZE = 1
"""Samples decoded and judged together: 1 keeps one image's activations in memory at a time."""
DEFAULT_TILE_OVERLAP = 8
"""Latent pixels two neighbouring decode tiles share (blended linearly across the overlap)."""
MIN_TILE_SIZE = 16
"""Smallest decode tile, in latent pixels: below this the VAE sees too little context to be useful."""

DEFAULT_CURATION_THRESHOLD = 0.23
"""Images scoring above this (their highest concept similarity) are proposed for the bank."""
DEFAULT_CLIP_DUPLICATE_COSINE = 0.95
"""Two images whose CLIP embeddings' cosine reaches this are flagged as near-duplicates."""
CURATION_BATCH = 16
"""Images embedded per CLIP forward pass while scoring a folder or an upload."""
