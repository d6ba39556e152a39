"""The extension's arguments as one validated unit, whatever front-end they come from.

The WebUI hands a script its UI values positionally (and the REST API's ``alwayson_scripts``
does too, missing trailing values taking the defaults); API users may instead pass one dict of
named fields. Both land here, are checked field by field, and turn into a SafeDenoiserConfig.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lib_safe_denoiser.banks.inputs import validate_bank_name
from lib_safe_denoiser.core.config import MODES, SafeDenoiserConfig
from lib_safe_denoiser.core.schedules import fraction_window_to_sigmas
from lib_safe_denoiser.errors import BankError, SafeDenoiserError
from lib_safe_denoiser.policy.builtin_presets import CUSTOM, DEFAULT_PRESET, PRESETS, preset_fields, preset_names

MAX_BANKS = 16
"""Banks one generation (or one saved preset) may negate at once."""
BANK_SEPARATOR = ", "
"""Several negation banks travel as one text, "a, b" (bank names cannot hold a comma): the UI's
multiselect, the REST list form and infotext all turn into it, and XYZ values stay one name each."""


class ArgsError(SafeDenoiserError, ValueError):
    """A bad argument; the message names the field."""


@dataclass(frozen=True)
class Bounds:
    """The range of a number field: checked by the argument model and published in the REST schema."""

    low: float | None = None
    high: float | None = None
    strict: bool = False
    """Open interval: the bounds themselves are refused."""
    open_high: bool = False
    """Only the high bound itself is refused (low <= value < high)."""

    @property
    def _high_open(self) -> bool:
        return self.strict or self.open_high

    def problem(self, name: str, value: float) -> str | None:
        below = self.low is not None and (value <= self.low if self.strict else value < self.low)
        above = self.high is not None and (value >= self.high if self._high_open else value > self.high)
        if not (below or above):
            return None
        if self.low is not None and self.high is not None:
            if self.open_high and not self.strict:
                return f"field {name!r} must satisfy {self.low:g} <= {name} < {self.high:g}, got {value}"
            how = "strictly between" if self.strict else "between"
            return f"field {name!r} must lie {how} {self.low:g} and {self.high:g}, got {value}"
        if self.low is not None:
            return f"field {name!r} must be {'>' if self.strict else '>='} {self.low:g}, got {value}"
        return f"field {name!r} must be {'<' if self._high_open else '<='} {self.high:g}, got {value}"

    def json_schema(self) -> dict[str, float]:
        """The same range as JSON schema keywords."""
        out: dict[str, float] = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.strict else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self._high_open else "maximum"] = self.high
        return out


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: type
    bounds: Bounds | None = None


FIELDS: tuple[Field, ...] = (
    Field("enabled", "Enable", bool),
    Field("bank", "Negation banks", str),
    Field("preset", "Preset", str),
    Field("mode", "Mode", str),
    Field("strength", "Strength", float, Bounds(low=0.0)),
    Field("window_start", "Active from (0 = pure noise)", float, Bounds(0.0, 1.0)),
    Field("window_end", "Active until (1 = clean image)", float, Bounds(0.0, 1.0)),
    Field("reference_bank", "Reference bank (odds mode)", str),
    Field("prior", "Prior unsafe share z (odds mode)", float, Bounds(0.0, 1.0, strict=True)),
    Field("bandwidth", "Kernel bandwidth (paper mode)", float, Bounds(low=0.0, strict=True)),
    Field("gate", "Gate (paper mode)", bool),
    Field("gate_margin", "Gate margin (paper mode)", float),
    Field("smoothing", "Bandwidth floor (odds mode)", float, Bounds(low=0.0)),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
APPENDED_FIELD_NAMES: tuple[str, ...] = ("smoothing",)
"""Fields added after the concept unit existed: they follow it in the script's positional order, so a
positional API call written before them keeps its meaning."""
_KINDS = {f.name: f.kind for f in FIELDS}


def _bank_list(value: Any) -> str:
    """One or several bank names (a list, or "a, b") as the canonical text; blanks dropped."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise ArgsError(f"field 'bank' must be a bank name or a list of bank names, got {value!r}")
        value = ",".join(value)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ArgsError(f"field 'bank' must be a bank name or a list of bank names, got {value!r}")
    return BANK_SEPARATOR.join(n.strip() for n in value.split(",") if n.strip())


def _coerce(name: str, value: Any) -> Any:
    if name == "bank":
        return _bank_list(value)
    kind = _KINDS[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ArgsError(f"field {name!r} must be true or false, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ArgsError(f"field {name!r} must be a finite number, got {value!r}")
        return float(value)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ArgsError(f"field {name!r} must be a string, got {value!r}")
    return value.strip()


def check_known(fields: Iterable[str], accepted: Sequence[str], error: type[Exception] = ArgsError) -> None:
    """Raise ``error`` naming every key of ``fields`` not in ``accepted``, and the accepted ones."""
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise error(f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")


def check_positional(values: Sequence[Any], accepted: Sequence[str]) -> None:
    """Raise ``ArgsError`` when there are more positional ``values`` than ``accepted`` fields."""
    if len(values) > len(accepted):
        raise ArgsError(f"got {len(values)} positional arguments, at most {len(accepted)} are accepted: "
                        f"{', '.join(accepted)}")


@dataclass(frozen=True)
class SafeDenoiserArgs:
    """Fields in UI order; ``FIELDS`` gives their labels. Construction validates."""

    enabled: bool = False
    bank: str = ""
    preset: str = DEFAULT_PRESET
    mode: str = "paper"
    strength: float = 0.33
    window_start: float = 0.0
    window_end: float = 0.22
    reference_bank: str = ""
    prior: float = 0.1
    bandwidth: float = 3.15
    gate: bool = True
    gate_margin: float = 1.6
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in FIELD_NAMES:
            object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        if self.preset not in preset_names():
            try:  # a saved preset's name (resolved in the caller's scopes by the front-end)
                validate_bank_name(self.preset)
            except BankError:
                raise ArgsError(f"field 'preset' must be one of {preset_names()} or the name of a saved preset, "
                                f"got {self.preset!r}") from None
        if self.mode not in MODES:
            raise ArgsError(f"field 'mode' must be one of {list(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.window_start <= self.window_end <= 1.0:
            raise ArgsError(f"fields 'window_start' and 'window_end' must satisfy 0 <= start <= end <= 1, "
                            f"got {self.window_start} and {self.window_end}")
        for f in FIELDS:
            problem = f.bounds.problem(f.name, getattr(self, f.name)) if f.bounds else None
            if problem:
                raise ArgsError(problem)
        for name, values in (("bank", self.banks), ("reference_bank", (self.reference_bank,))):
            for value in filter(None, values):
                try:
                    validate_bank_name(value)
                except BankError as exc:
                    raise ArgsError(f"field {name!r}: {exc}") from None
        if len(self.banks) > MAX_BANKS:
            raise ArgsError(f"field 'bank' names {len(self.banks)} banks; at most {MAX_BANKS} are accepted")
        if len({b.casefold() for b in self.banks}) != len(self.banks):
            raise ArgsError(f"field 'bank' names a bank twice (names ignore case): {self.bank!r}")
        if self.saved_preset:
            return  # the preset may supply the banks: checked again once it is resolved
        if self.enabled and not self.bank:
            raise ArgsError("field 'bank' is required when the safe denoiser is enabled: choose a negation bank "
                            "(or concepts to steer away from)")
        if self.enabled and self.mode == "odds" and not self.reference_bank:
            raise ArgsError("field 'reference_bank' is required in the odds mode: choose a bank of generic "
                            "safe images")

    @property
    def banks(self) -> tuple[str, ...]:
        """The negation banks, in the order given."""
        return tuple(self.bank.split(BANK_SEPARATOR)) if self.bank else ()

    @property
    def saved_preset(self) -> bool:
        """Whether ``preset`` names a saved preset (looked up by the front-end), not a built-in recipe."""
        return self.preset not in preset_names()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> SafeDenoiserArgs:
        """Named fields. A preset fills the fields the dict leaves out; unknown keys are an error."""
        check_known(fields, FIELD_NAMES)
        values = dict(fields)
        preset = values.get("preset", DEFAULT_PRESET)
        if isinstance(preset, str) and preset in preset_names():
            values = {**preset_fields(preset), **values}
        return cls(**values)

    # ------------------------------------------------------------------ conversions
    def replace(self, **changes: Any) -> SafeDenoiserArgs:
        return dataclasses.replace(self, **changes)

    def with_preset(self, name: str) -> SafeDenoiserArgs:
        """The same arguments with a preset's numbers (a KeyError names the choices)."""
        return self.replace(preset=name, **preset_fields(name))

    def settled(self) -> SafeDenoiserArgs:
        """The same arguments, named "custom" when their numbers are no longer the built-in preset's.

        Infotext then says what really ran, and pasting it back does not re-apply the preset
        over the user's own numbers. A saved preset's name is left for the front-end to resolve.
        """
        if self.preset not in PRESETS:
            return self
        recipe = preset_fields(self.preset)
        if any(getattr(self, k) != v for k, v in recipe.items()):
            return self.replace(preset=CUSTOM)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELD_NAMES}

    def sigma_window(self, alphas_cumprod: torch.Tensor) -> tuple[float, float]:
        """(sigma_min, sigma_max) of the window: fraction f of the timeline is DDPM t = (1 - f)(T - 1)."""
        return fraction_window_to_sigmas(self.window_start, self.window_end, alphas_cumprod)

    def to_config(self, alphas_cumprod: torch.Tensor, **extra: Any) -> SafeDenoiserConfig:
        """The engine's configuration for a model with this noise schedule."""
        lo, hi = self.sigma_window(alphas_cumprod)
        common = {"mode": self.mode, "sigma_min": lo, "sigma_max": hi, **extra}
        if self.mode == "paper":
            return SafeDenoiserConfig(scale=self.strength, bandwidth=self.bandwidth,
                                      gate_margin=self.gate_margin if self.gate else math.inf, **common)
        return SafeDenoiserConfig(strength=self.strength, prior=self.prior, smoothing=self.smoothing, **common)
