"""Concepts as users type them: one text, comma or newline separated, checked before CLIP sees it."""

from __future__ import annotations

from collections.abc import Iterable

from lib_safe_denoiser.concepts.constants import MAX_CONCEPT_CHARS, MAX_CONCEPTS, MAX_CONCEPTS_TEXT
from lib_safe_denoiser.errors import SafeDenoiserError

CONCEPT_SEPARATOR = ", "
"""Canonical text of a concept list (what infotext and the REST echo show)."""


class ConceptError(SafeDenoiserError, ValueError):
    """A bad concept list; the message says what is wrong and how to fix it."""


def parse_concepts(value: str | Iterable[str] | None, *, required: bool = True) -> tuple[str, ...]:
    """The concepts in ``value`` (a text split on commas and newlines, or a list of texts).

    Each concept is stripped and its inner whitespace collapsed; blanks are dropped and repeats
    (ignoring case) removed, the first spelling kept. ``ConceptError`` when none is left and
    ``required``, when there are more than ``MAX_CONCEPTS`` or one is longer than ``MAX_CONCEPT_CHARS``,
    or when one holds control characters.
    """
    if value is None:
        items: list[str] = []
    elif isinstance(value, str):
        if len(value) > MAX_CONCEPTS_TEXT:
            raise ConceptError(f"the concepts text is {len(value)} characters long; keep it to "
                               f"{MAX_CONCEPTS} short phrases ({MAX_CONCEPTS_TEXT} characters)")
        items = value.replace("\r", "\n").replace("\n", ",").split(",")
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
        if not all(isinstance(v, str) for v in items):
            raise ConceptError(f"concepts must be texts, got {[type(v).__name__ for v in items]}")
        if any("," in v or "\n" in v for v in items):
            items = [part for v in items for part in v.replace("\n", ",").split(",")]
    else:
        raise ConceptError(f"concepts must be one text (comma-separated) or a list of texts, "
                           f"got {type(value).__name__}")
    out: list[str] = []
    seen: set[str] = set()
    for raw in items:
        concept = " ".join(raw.split())
        if not concept:
            continue
        if any(ord(c) < 32 or ord(c) == 127 for c in concept):
            raise ConceptError(f"the concept {concept[:40]!r} contains control characters; type plain words")
        if len(concept) > MAX_CONCEPT_CHARS:
            raise ConceptError(f"the concept {concept[:40] + '...'!r} is {len(concept)} characters long; "
                               f"keep each concept to {MAX_CONCEPT_CHARS} (a short phrase such as 'nudity')")
        if concept.casefold() not in seen:
            seen.add(concept.casefold())
            out.append(concept)
    if len(out) > MAX_CONCEPTS:
        raise ConceptError(f"{len(out)} concepts given; at most {MAX_CONCEPTS} are accepted "
                           "(each is compared with every corrected step)")
    if required and not out:
        raise ConceptError("no concepts given: type what to steer away from, e.g. 'nudity, violence'")
    return tuple(out)


def concepts_text(concepts: Iterable[str]) -> str:
    """The canonical one-line text of a parsed concept list."""
    return CONCEPT_SEPARATOR.join(concepts)
