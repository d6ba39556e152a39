"""A JSON schema of the extension's ``alwayson_scripts`` entry, made from ``FIELDS``.

API clients (and their code generators) read it from ``GET /safe-denoiser/v1/schema`` instead of
copying field lists from the README. Types and labels come from ``FIELDS``, defaults from
``SafeDenoiserArgs``, choices from the same lists the validator checks against; the numeric ranges
are the validator's rules as JSON schema keywords (tests check that a value past each bound is refused
by both). What JSON schema cannot say (window_start <= window_end) stays in the field's description.
"""

from __future__ import annotations

from typing import Any

from lib_safe_denoiser.banks.inputs import MAX_NAME_LEN
from lib_safe_denoiser.concepts.args import CONCEPT_FIELDS, ConceptArgs, ConceptField
from lib_safe_denoiser.concepts.constants import MAX_CONCEPT_CHARS, MAX_CONCEPTS, MAX_CONCEPTS_TEXT
from lib_safe_denoiser.core.config import MODES
from lib_safe_denoiser.generation.api_validation import SCRIPT_KEY
from lib_safe_denoiser.generation.args import FIELDS, MAX_BANKS, Field, SafeDenoiserArgs
from lib_safe_denoiser.generation.script_args import SCRIPT_FIELD_NAMES
from lib_safe_denoiser.policy.builtin_presets import preset_names

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

JSON_TYPES: dict[type, str] = {bool: "boolean", float: "number", str: "string"}

BOUNDS: dict[str, dict[str, float]] = {f.name: f.bounds.json_schema() for f in FIELDS if f.bounds}
"""The ranges the argument model enforces (``Field.bounds``), as JSON schema keywords."""

NAME_PATTERN = rf"[A-Za-z0-9_\-](?:[A-Za-z0-9 _.\-]{{0,{MAX_NAME_LEN - 2}}}[A-Za-z0-9_\-])?"
"""A bank or saved preset name (``validate_bank_name``'s rules, as far as a pattern can say them)."""
NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
BANKS_TEXT_PATTERN = f"^ *(?:{NAME_PATTERN} *(?:, *{NAME_PATTERN} *)*)?$"

NOTES: dict[str, str] = {
    "window_start": "Fraction of the sampling timeline; must be <= window_end.",
    "window_end": "Fraction of the sampling timeline; must be >= window_start.",
    "bank": "A negation bank's name, several as a list or as one text \"a, b\"; required when enabled.",
    "reference_bank": "Name of a bank of generic safe images; required when enabled in the odds mode.",
    "preset": "A built-in recipe or a saved preset (yours first, then the global ones); in the named form it fills "
              "the fields the request leaves out.",
}


def _choices() -> dict[str, list[str]]:
    return {"preset": list(preset_names()), "mode": list(MODES)}


def field_schema(field: Field) -> dict[str, Any]:
    """One field: type, title (the UI label), default and whatever range or choices apply."""
    name = field.name
    schema: dict[str, Any] = {"type": JSON_TYPES[field.kind], "title": field.label,
                              "default": getattr(SafeDenoiserArgs(), name)}
    choices = _choices()
    if name in choices:
        schema["enum"] = choices[name]
    schema.update(BOUNDS.get(name, {}))
    if name == "preset":
        schema["anyOf"] = [{"enum": schema.pop("enum")}, NAME_SCHEMA]
    if name == "reference_bank":
        schema["anyOf"] = [{"const": ""}, NAME_SCHEMA]
    if name == "bank":
        schema.pop("type")
        schema["anyOf"] = [{"type": "string", "pattern": BANKS_TEXT_PATTERN},
                           {"type": "array", "items": NAME_SCHEMA, "maxItems": MAX_BANKS}]
    if name in NOTES:
        schema["description"] = NOTES[name]
    return schema


def concept_field_schema(field: ConceptField) -> dict[str, Any]:
    """A field of the concept unit (``concepts/args.py``)."""
    schema: dict[str, Any] = {"title": field.label, "default": getattr(ConceptArgs(), field.name)}
    if field.name == "concepts":
        schema["anyOf"] = [{"type": "string", "maxLength": MAX_CONCEPTS_TEXT},
                           {"type": "array", "items": {"type": "string", "maxLength": MAX_CONCEPT_CHARS},
                            "maxItems": MAX_CONCEPTS}]
        schema["description"] = "Text concepts to steer away from, judged by CLIP; empty: none."
        return schema
    schema["type"] = JSON_TYPES[field.kind]
    schema.update(field.bounds.json_schema() if field.bounds else {})
    return schema


def _required_when(condition: dict[str, Any], field: str) -> dict[str, Any]:
    """``field`` is required under ``condition``, unless a saved preset (which may supply it) is named
    or, for the bank, concepts steer instead."""
    builtin = {"preset": {"enum": preset_names()}, "concepts": {"pattern": "^[\\s,]*$", "maxItems": 0}}
    return {"if": {"properties": {**condition, **builtin}, "required": list(condition)},
            "then": {"properties": {field: {"minLength": 1, "minItems": 1}}, "required": [field]}}


def args_schema() -> dict[str, Any]:
    """The JSON schema of ``{"safe denoiser": {"args": [...]}}`` inside ``alwayson_scripts``.

    ``args`` is either one object of named fields or the values in UI order (missing trailing values
    take the defaults).
    """
    names = list(SCRIPT_FIELD_NAMES)
    every = {**{f.name: field_schema(f) for f in FIELDS}, **{f.name: concept_field_schema(f) for f in CONCEPT_FIELDS}}
    fields = {name: every[name] for name in names}
    named = {
        "type": "object",
        "properties": fields,
        "additionalProperties": False,
        "allOf": [
            _required_when({"enabled": {"const": True}}, "bank"),
            _required_when({"enabled": {"const": True}, "mode": {"const": "odds"}}, "reference_bank"),
        ],
    }
    positional = {
        "type": "array",
        "title": "Positional values",
        "description": "In this order: " + ", ".join(names) + ". Missing trailing values take the defaults.",
        "prefixItems": [fields[name] for name in names],
        "items": False,
        "maxItems": len(names),
    }
    named_args = {"type": "array", "title": "Named fields", "prefixItems": [{"$ref": "#/$defs/fields"}],
                  "items": False, "minItems": 1, "maxItems": 1}
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "Safe Denoiser: alwayson_scripts",
        "description": "The entry of this extension in the alwayson_scripts of /sdapi/v1/txt2img and img2img.",
        "type": "object",
        "properties": {
            SCRIPT_KEY: {
                "type": "object",
                "properties": {"args": {"oneOf": [named_args, {"$ref": "#/$defs/positional"}]}},
                "required": ["args"],
            },
        },
        "$defs": {"fields": named, "positional": positional},
    }
