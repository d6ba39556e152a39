"""The JSON schema of the alwayson_scripts entry says what the validator checks (where JSON schema can)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lib_safe_denoiser.concepts.args import CONCEPT_FIELDS, ConceptArgs
from lib_safe_denoiser.core.config import MODES
from lib_safe_denoiser.generation.api_validation import SCRIPT_KEY
from lib_safe_denoiser.generation.args import FIELDS, ArgsError, SafeDenoiserArgs
from lib_safe_denoiser.generation.schema import BOUNDS, JSON_TYPES, args_schema
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES, ScriptArgs
from lib_safe_denoiser.policy.builtin_presets import preset_names

SCHEMA = args_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
STEP = 1e-6


def entry(args) -> dict:
    return {SCRIPT_KEY: {"args": args}}


def schema_accepts(args) -> bool:
    return VALIDATOR.is_valid(entry(args))


def validator_accepts(args) -> bool:
    try:
        ScriptArgs.check_api_args(args)
    except ArgsError:
        return False
    return True


def test_the_schema_is_valid_json_schema_and_plain_json():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert json.loads(json.dumps(SCHEMA)) == SCHEMA


def test_every_field_is_there_with_type_label_and_default():
    named = SCHEMA["$defs"]["fields"]
    positional = SCHEMA["$defs"]["positional"]["prefixItems"]
    defaults = SafeDenoiserArgs()
    assert list(named["properties"]) == list(SCRIPT_FIELD_NAMES)
    assert named["additionalProperties"] is False
    assert SCHEMA["$defs"]["positional"]["maxItems"] == len(SCRIPT_FIELD_NAMES)
    concept_at = SCRIPT_FIELD_NAMES.index(CONCEPT_FIELDS[0].name)
    concept_slots = positional[concept_at:concept_at + len(CONCEPT_FIELDS)]
    assert [p["title"] for p in concept_slots] == [f.label for f in CONCEPT_FIELDS]
    assert [p["default"] for p in concept_slots] == ConceptArgs().as_positional()
    assert SCRIPT_FIELD_NAMES[-1] == "smoothing", "a field added later is appended, after the concepts"
    for f in FIELDS:
        prop = named["properties"][f.name]
        assert prop == positional[SCRIPT_FIELD_NAMES.index(f.name)]
        if f.name != "bank":  # one name as text, or several as a list
            assert prop["type"] == JSON_TYPES[f.kind]
        assert prop["title"] == f.label
        assert prop["default"] == getattr(defaults, f.name)


def test_choices_are_the_validators():
    props = SCHEMA["$defs"]["fields"]["properties"]
    assert props["mode"]["enum"] == list(MODES)
    assert props["preset"]["anyOf"][0]["enum"] == preset_names()
    for mode in MODES:
        assert validator_accepts([{"mode": mode}]) and schema_accepts([{"mode": mode}])
    for preset in preset_names():
        assert validator_accepts([{"preset": preset}]) and schema_accepts([{"preset": preset}])


@pytest.mark.parametrize("fields", [
    {"preset": "my faces"}, {"bank": "faces"}, {"bank": "faces, logos"}, {"bank": ["faces", "logos"]},
    {"enabled": True, "bank": ["faces"]}, {"reference_bank": "generic"}, {"enabled": True, "preset": "my faces"},
    {"enabled": True, "preset": "my faces", "mode": "odds"},
])
def test_saved_presets_and_several_banks_pass_both(fields):
    assert validator_accepts([fields]) and schema_accepts([fields])


@pytest.mark.parametrize("fields, valid", [
    ({"enabled": True, "concepts": "nudity, blood"}, True),
    ({"enabled": True, "concepts": ["nudity"]}, True),
    ({"enabled": True, "concepts": ""}, False),
    ({"concept_eta": 1.0}, False),
    ({"concept_eta": 0.999}, True),
    ({"concept_eta": -1.0}, True),
    ({"concept_eta": -1.001}, False),
    ({"concept_gamma": -1.0}, False),
    ({"concept_window_start": 1.5}, False),
])
def test_concept_fields_agree(fields, valid):
    assert validator_accepts([fields]) == valid and schema_accepts([fields]) == valid


def test_defaults_validate_in_both_forms():
    defaults = ScriptArgs(SafeDenoiserArgs(), ConceptArgs())
    for args in ([defaults.as_dict()], defaults.as_positional(), [], [{}]):
        assert schema_accepts(args) and validator_accepts(args)


def bound_cases():
    """(field, value) on and just past every bound in BOUNDS."""
    for name, bounds in BOUNDS.items():
        for keyword, limit in bounds.items():
            outward = -STEP if "inimum" in keyword else STEP
            yield name, limit
            yield name, limit + outward
            yield name, limit - outward


@pytest.mark.parametrize("name, value", list(bound_cases()))
def test_schema_and_validator_agree_at_every_bound(name, value):
    args = [{"preset": "custom", "window_start": 0.0, "window_end": 1.0, name: value}]
    assert schema_accepts(args) == validator_accepts(args)


@pytest.mark.parametrize("args", [
    [{"mode": "turbo"}],
    [{"preset": "../mine"}],
    [{"bank": ["a", "../b"]}],
    [{"strength": "high"}],
    [{"strength": True}],
    [{"enabled": "yes"}],
    [{"bank": 3}],
    [{"bank": "b" * 65}],
    [{"strenght": 1.0}],
    [{"enabled": True}],
    [{"enabled": True, "bank": ""}],
    [{"enabled": True, "bank": "b", "mode": "odds"}],
    [{"enabled": True}, 1.0],
    [True, {"bank": "b"}],
    [False] * (len(FIELDS) + 1),
    [False, "", "../mine"],
    ["yes"],
    [False, "", "custom", "paper", -1.0],
])
def test_what_the_validator_refuses_the_schema_refuses(args):
    assert not validator_accepts(args)
    assert not schema_accepts(args)


def test_good_requests_pass_both():
    good = [
        [{"enabled": True, "bank": "unsafe", "strength": 0.5}],
        [{"enabled": True, "bank": "unsafe", "mode": "odds", "reference_bank": "generic", "prior": 0.2}],
        [True, "unsafe", "nudity (SD 1.x)", "paper", 0.5],
        ScriptArgs(SafeDenoiserArgs(enabled=True, bank="b", mode="constant", strength=2.0, smoothing=0.5),
                   ConceptArgs()).as_positional(),
    ]
    for args in good:
        assert validator_accepts(args) and schema_accepts(args)
