"""The concept steering's arguments as one validated unit, with its labels and infotext.

The counterpart of ``generation.args`` for the text-concept side: the glue appends these fields
to the accordion, the REST dict and infotext. Empty ``concepts`` means the concept steering is
off; the window is given as fractions of the sampling timeline like the bank side's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lib_safe_denoiser.concepts.constants import DEFAULT_ETA, DEFAULT_GAMMA
from lib_safe_denoiser.concepts.parsing import ConceptError, concepts_text, parse_concepts
from lib_safe_denoiser.concepts.steering import ConceptSummary
from lib_safe_denoiser.core.schedules import fraction_window_to_sigmas
from lib_safe_denoiser.generation.args import Bounds, check_known
from lib_safe_denoiser.generation.infotext import format_number, format_window, read_float, read_window

PREFIX = "Safe denoiser concepts"
KEY_CONCEPTS = PREFIX
KEY_MODEL = f"{PREFIX} model"
KEY_ETA = f"{PREFIX} eta"
KEY_GAMMA = f"{PREFIX} gamma"
KEY_WINDOW = f"{PREFIX} window"
KEY_TRIGGERED = f"{PREFIX} triggered"
KEY_MAX_SIMILARITY = f"{PREFIX} max similarity"


@dataclass(frozen=True)
class ConceptField:
    name: str
    label: str
    kind: type
    infotext_key: str
    bounds: Bounds | None = None
    """The range the argument model enforces and the REST schema publishes (as on the bank side)."""


CONCEPT_FIELDS: tuple[ConceptField, ...] = (
    ConceptField("concepts", "Concepts to steer away from (comma-separated; empty: off)", str, KEY_CONCEPTS),
    ConceptField("concept_eta", "Concept threshold eta (CLIP similarity)", float, KEY_ETA,
                 Bounds(-1.0, 1.0, open_high=True)),  # a cosine similarity; at 1 nothing could trigger
    ConceptField("concept_gamma", "Concept step gamma", float, KEY_GAMMA, Bounds(low=0.0)),
    ConceptField("concept_window_start", "Concepts active from (0 = pure noise)", float, KEY_WINDOW, Bounds(0.0, 1.0)),
    ConceptField("concept_window_end", "Concepts active until (1 = clean image)", float, KEY_WINDOW, Bounds(0.0, 1.0)),
)
CONCEPT_FIELD_NAMES = tuple(f.name for f in CONCEPT_FIELDS)
INFOTEXT_FIELDS: tuple[tuple[str, str], ...] = tuple((f.name, f.infotext_key) for f in CONCEPT_FIELDS)
"""(argument field, infotext key) for the WebUI's paste mapping."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConceptError(f"field {name!r} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ConceptArgs:
    """Fields in UI order (``CONCEPT_FIELDS`` gives labels); construction validates and canonicalises."""

    concepts: str = ""
    concept_eta: float = DEFAULT_ETA
    concept_gamma: float = DEFAULT_GAMMA
    concept_window_start: float = 0.0
    concept_window_end: float = 1.0

    def __post_init__(self) -> None:
        try:
            parsed = parse_concepts(self.concepts, required=False)
        except ConceptError as e:
            raise ConceptError(f"field 'concepts': {e}") from None
        object.__setattr__(self, "concepts", concepts_text(parsed))
        for f in CONCEPT_FIELDS[1:]:
            value = _number(f.name, getattr(self, f.name))
            problem = f.bounds.problem(f.name, value) if f.bounds else None
            if problem:
                raise ConceptError(problem)
            object.__setattr__(self, f.name, value)
        if self.concept_window_start > self.concept_window_end:
            raise ConceptError("fields 'concept_window_start' and 'concept_window_end' must satisfy "
                               f"start <= end, got {self.concept_window_start} and {self.concept_window_end}")

    @property
    def enabled(self) -> bool:
        return bool(self.concepts)

    @property
    def concept_list(self) -> tuple[str, ...]:
        return parse_concepts(self.concepts, required=False)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ConceptArgs:
        """Named fields (only this unit's; the caller splits a combined dict). Unknown keys are an error."""
        check_known(fields, CONCEPT_FIELD_NAMES, ConceptError)
        values = dict(fields)
        if "concepts" in values and isinstance(values["concepts"], (list, tuple)):
            values["concepts"] = concepts_text(parse_concepts(values["concepts"], required=False))
        if values.get("concepts") is None:
            values.pop("concepts", None)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONCEPT_FIELD_NAMES}

    def as_positional(self) -> list[Any]:
        return [getattr(self, name) for name in CONCEPT_FIELD_NAMES]

    def replace(self, **changes: Any) -> ConceptArgs:
        return dataclasses.replace(self, **changes)

    def sigma_window(self, alphas_cumprod: torch.Tensor) -> tuple[float, float]:
        return fraction_window_to_sigmas(self.concept_window_start, self.concept_window_end, alphas_cumprod)


def to_infotext(args: ConceptArgs, judge_label: str, summary: ConceptSummary | None) -> dict[str, str]:
    """The pairs to put in ``p.extra_generation_params`` when concepts are set.

    ``judge_label`` names the CLIP model and weights (``ClipJudge.label``). The summary adds the
    triggered samples per judged step ("0,0,1,2,...") and the highest similarity met.
    """
    if not args.enabled:
        return {}
    out = {
        KEY_CONCEPTS: args.concepts,
        KEY_MODEL: judge_label,
        KEY_ETA: format_number(args.concept_eta),
        KEY_GAMMA: format_number(args.concept_gamma),
        KEY_WINDOW: format_window(args.concept_window_start, args.concept_window_end),
    }
    if summary is not None:
        out[KEY_TRIGGERED] = ",".join(str(n) for n in summary.triggered_per_step) or "none judged"
        if not math.isnan(summary.max_similarity):
            out[KEY_MAX_SIMILARITY] = format_number(summary.max_similarity)
    return out


def from_infotext(params: Mapping[str, Any]) -> dict[str, Any]:
    """Argument fields recovered from pasted infotext pairs; ``{"concepts": ""}`` when the image
    was made without concepts (so pasting turns them off)."""
    if KEY_CONCEPTS not in params:
        return {"concepts": ""}
    out: dict[str, Any] = {"concepts": str(params[KEY_CONCEPTS])}
    for name, key in (("concept_eta", KEY_ETA), ("concept_gamma", KEY_GAMMA)):
        value = read_float(params, key)
        if value is not None:
            out[name] = value
    window = read_window(params, KEY_WINDOW)
    if window is not None:
        out["concept_window_start"], out["concept_window_end"] = window
    return out
