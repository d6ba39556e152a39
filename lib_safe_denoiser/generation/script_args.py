"""The script's whole argument list: the bank correction's unit (``generation/args.py``), then the
text-concept unit (``concepts/args.py``), positionally and in one dict; bank fields added later come last.

The accordion's Enable switches both on. A generation may use a bank, concepts or both: the bank
side then needs a bank only when no concepts are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lib_safe_denoiser.concepts.args import CONCEPT_FIELD_NAMES, CONCEPT_FIELDS, ConceptArgs
from lib_safe_denoiser.concepts.parsing import ConceptError
from lib_safe_denoiser.generation.args import (
    APPENDED_FIELD_NAMES,
    FIELD_NAMES,
    FIELDS,
    ArgsError,
    SafeDenoiserArgs,
    check_known,
    check_positional,
)

SCRIPT_FIELD_NAMES: tuple[str, ...] = (tuple(n for n in FIELD_NAMES if n not in APPENDED_FIELD_NAMES)
                                       + CONCEPT_FIELD_NAMES + APPENDED_FIELD_NAMES)
"""Every argument of the script, in positional order: the bank unit's first fields, the concept unit's, then
the bank fields added later (``APPENDED_FIELD_NAMES``)."""
SCRIPT_LABELS: dict[str, str] = {f.name: f.label for f in (*FIELDS, *CONCEPT_FIELDS)}
"""Each argument's label in the accordion (and the REST schema)."""


@dataclass(frozen=True)
class ScriptArgs:
    """``bank``: the bank correction's arguments (``bank.enabled`` False when only concepts steer);
    ``concepts``: the concept steering's, on when ``concepts_on``."""

    bank: SafeDenoiserArgs
    concepts: ConceptArgs
    concepts_on: bool = False

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ScriptArgs:
        """Named fields of both units; unknown keys are an error naming every accepted one."""
        check_known(fields, SCRIPT_FIELD_NAMES)
        try:
            concepts = ConceptArgs.from_dict({k: v for k, v in fields.items() if k in CONCEPT_FIELD_NAMES})
        except ConceptError as e:
            raise ArgsError(str(e)) from None
        bank_fields = {k: v for k, v in fields.items() if k in FIELD_NAMES}
        enabled = bank_fields.get("enabled", False) is True
        concepts_alone = enabled and concepts.enabled and not _has_bank(bank_fields)
        if concepts_alone:
            preset = bank_fields.get("preset")
            if not (isinstance(preset, str) and SafeDenoiserArgs(preset=preset).saved_preset):
                bank_fields["enabled"] = False  # no bank: only the concepts steer
        return cls(SafeDenoiserArgs.from_dict(bank_fields), concepts, enabled and concepts.enabled)

    @classmethod
    def from_positional(cls, values: Sequence[Any]) -> ScriptArgs:
        """UI order; missing trailing values take the defaults, extra ones are an error."""
        check_positional(values, SCRIPT_FIELD_NAMES)
        named = dict(zip(SCRIPT_FIELD_NAMES, values, strict=False))
        return cls.from_dict({**SafeDenoiserArgs().as_dict(), **named})  # the defaults, not a preset's numbers

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> ScriptArgs:
        """What a Script receives: one dict of named fields first, or the positional UI values.

        The WebUI fills the slots after an API request's own args with the UI defaults, so with a
        dict first the rest are those defaults and are ignored; ``check_api_args`` refuses a
        request that really sends more than the dict.
        """
        if len(args) >= 1 and isinstance(args[0], Mapping):
            return cls.from_dict(args[0])
        return cls.from_positional(args)

    @classmethod
    def check_api_args(cls, args: Any) -> ScriptArgs:
        """Validate the raw ``args`` of an API request's ``alwayson_scripts`` entry."""
        if not isinstance(args, list):
            raise ArgsError(f"'args' must be a list (positional values, or one dict of named fields), got {args!r}")
        if args and isinstance(args[0], Mapping) and len(args) > 1:
            raise ArgsError("pass either one dict of named fields or positional values, not both")
        if any(isinstance(a, Mapping) for a in args[1:]):
            raise ArgsError("a dict of named fields must be the only element of 'args'")
        return cls.from_script_args(args)

    @property
    def enabled(self) -> bool:
        """Whether the job asked for any steering."""
        return self.bank.enabled or self.concepts_on

    def as_dict(self) -> dict[str, Any]:
        return {**self.bank.as_dict(), **self.concepts.as_dict(), "enabled": self.enabled}

    def as_positional(self) -> list[Any]:
        values = self.as_dict()
        return [values[name] for name in SCRIPT_FIELD_NAMES]


def _has_bank(fields: Mapping[str, Any]) -> bool:
    bank = fields.get("bank")
    if isinstance(bank, (list, tuple)):
        return any(isinstance(b, str) and b.strip() for b in bank)
    return isinstance(bank, str) and bool(bank.replace(",", "").strip())
