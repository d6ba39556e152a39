"""Concept lists, the concepts' argument unit and its infotext."""

from __future__ import annotations

import math

import pytest
import torch

from lib_safe_denoiser.concepts import args as cargs
from lib_safe_denoiser.concepts.args import ConceptArgs, fraction_window_to_sigmas
from lib_safe_denoiser.concepts.constants import MAX_CONCEPT_CHARS, MAX_CONCEPTS
from lib_safe_denoiser.concepts.parsing import ConceptError, parse_concepts
from lib_safe_denoiser.concepts.steering import ConceptSummary
from lib_safe_denoiser.core.schedules import timestep_to_sigma


def test_concepts_split_on_commas_and_newlines_deduplicated():
    assert parse_concepts(" nudity,  violence\nBlood ,,\r\nNUDITY ") == ("nudity", "violence", "Blood")
    assert parse_concepts(["gore, weapons", "  a   cat "]) == ("gore", "weapons", "a cat")
    assert parse_concepts("", required=False) == ()


@pytest.mark.parametrize("value, message", [
    ("", "no concepts given"),
    (" , \n ", "no concepts given"),
    (", ".join(f"c{i}" for i in range(MAX_CONCEPTS + 1)), f"at most {MAX_CONCEPTS}"),
    ("x" * (MAX_CONCEPT_CHARS + 1), f"keep each concept to {MAX_CONCEPT_CHARS}"),
    ("a\x00b", "control characters"),
    ("y" * 100_000, "characters long"),
    (42, "one text"),
    ([1, 2], "must be texts"),
])
def test_bad_concept_lists_are_refused_with_the_reason(value, message):
    with pytest.raises(ConceptError, match=message):
        parse_concepts(value)


def test_args_canonicalise_and_validate_naming_the_field():
    args = ConceptArgs(concepts="nudity ,violence,", concept_eta=0.3, concept_gamma=50)
    assert args.concepts == "nudity, violence" and args.enabled
    assert args.concept_gamma == 50.0 and isinstance(args.concept_gamma, float)
    assert not ConceptArgs().enabled
    for fields, name in (({"concept_eta": 1.0}, "concept_eta"), ({"concept_gamma": -1}, "concept_gamma"),
                         ({"concept_window_start": 1.5}, "concept_window_start"),
                         ({"concept_eta": math.nan}, "concept_eta"), ({"concept_gamma": True}, "concept_gamma"),
                         ({"concepts": "a\x01"}, "concepts"),
                         ({"concept_window_start": 0.8, "concept_window_end": 0.2}, "concept_window_start")):
        with pytest.raises(ConceptError, match=f"'{name}'"):
            ConceptArgs(**fields)


def test_from_dict_takes_lists_and_refuses_unknown_fields():
    assert ConceptArgs.from_dict({"concepts": ["a", "b"]}).concepts == "a, b"
    assert ConceptArgs.from_dict({"concepts": None}) == ConceptArgs()
    with pytest.raises(ConceptError, match="unknown field.*'eta'"):
        ConceptArgs.from_dict({"eta": 0.2})
    args = ConceptArgs("x", 0.25, 10.0, 0.1, 0.9)
    assert ConceptArgs(*args.as_positional()) == ConceptArgs.from_dict(args.as_dict()) == args


def test_labels_and_infotext_names_cover_every_field():
    assert [f.name for f in cargs.CONCEPT_FIELDS] == list(ConceptArgs.__dataclass_fields__)
    assert all(f.label and f.infotext_key.startswith(cargs.PREFIX) for f in cargs.CONCEPT_FIELDS)


def test_infotext_round_trip_and_what_it_did():
    args = ConceptArgs("nudity, violence", 0.2, 60.0, 0.1, 0.8)
    pairs = cargs.to_infotext(args, "ViT-B-16/openai", ConceptSummary((0, 1, 2), 0.3141))
    assert pairs[cargs.KEY_MODEL] == "ViT-B-16/openai"
    assert pairs[cargs.KEY_TRIGGERED] == "0,1,2" and pairs[cargs.KEY_MAX_SIMILARITY] == "0.3141"
    assert ConceptArgs(**cargs.from_infotext(pairs)) == args
    assert cargs.to_infotext(ConceptArgs(), "m", None) == {}
    assert cargs.from_infotext({"Steps": "20"}) == {"concepts": ""}
    nothing = cargs.to_infotext(args, "m", ConceptSummary((), math.nan))
    assert nothing[cargs.KEY_TRIGGERED] == "none judged" and cargs.KEY_MAX_SIMILARITY not in nothing


def test_the_fraction_window_maps_to_sigmas_like_the_bank_side():
    ac = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000), 0)
    assert fraction_window_to_sigmas(0.0, 1.0, ac) == (0.0, math.inf)
    lo, hi = ConceptArgs("x", concept_window_start=0.25, concept_window_end=0.5).sigma_window(ac)
    assert hi == pytest.approx(float(timestep_to_sigma(0.75 * 999, ac)))
    assert lo == pytest.approx(float(timestep_to_sigma(0.5 * 999, ac)))
    assert lo < hi
