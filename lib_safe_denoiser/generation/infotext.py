"""Infotext: what the safe denoiser used and what it did, as the WebUI's "key: value" pairs.

``to_infotext`` and ``from_infotext`` are a pair: pasting an image's parameters back restores
the arguments that made it (like sd-webui-controlnet's serialise/parse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lib_safe_denoiser.generation.args import SafeDenoiserArgs
from lib_safe_denoiser.policy.builtin_presets import CUSTOM
from lib_safe_denoiser.policy.presets_store import SCOPE_BUILTIN, PresetRef

PREFIX = "Safe denoiser"
KEY_BANK = PREFIX
KEY_HASH = f"{PREFIX} hash"
KEY_PRESET = f"{PREFIX} preset"
KEY_PRESET_SCOPE = f"{PREFIX} preset scope"
KEY_POLICY = f"{PREFIX} policy"
KEY_MODE = f"{PREFIX} mode"
KEY_STRENGTH = f"{PREFIX} strength"
KEY_WINDOW = f"{PREFIX} window"
KEY_REFERENCE = f"{PREFIX} reference"
KEY_PRIOR = f"{PREFIX} prior"
KEY_BANDWIDTH = f"{PREFIX} bandwidth"
KEY_GATE = f"{PREFIX} gate"
KEY_SMOOTHING = f"{PREFIX} floor"
KEY_ACTED = f"{PREFIX} acted"
KEY_MAX_BETA = f"{PREFIX} max beta"
KEY_ERROR = f"{PREFIX} error"

INFOTEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("enabled", KEY_BANK),
    ("bank", KEY_BANK),
    ("preset", KEY_PRESET),
    ("mode", KEY_MODE),
    ("strength", KEY_STRENGTH),
    ("window_start", KEY_WINDOW),
    ("window_end", KEY_WINDOW),
    ("reference_bank", KEY_REFERENCE),
    ("prior", KEY_PRIOR),
    ("bandwidth", KEY_BANDWIDTH),
    ("gate", KEY_GATE),
    ("gate_margin", KEY_GATE),
    ("smoothing", KEY_SMOOTHING),
)
"""(argument field, infotext key) for the WebUI's paste mapping."""


@dataclass(frozen=True)
class TraceSummary:
    """What the correction did over one sampling pass."""

    acted_steps: int
    total_steps: int
    max_beta: float


def format_number(value: float) -> str:
    """A number as infotext shows it (4 significant digits)."""
    return f"{value:.4g}"


def format_window(start: float, end: float) -> str:
    """A window as infotext shows it, "start-end" (``read_window`` reads it back)."""
    return f"{format_number(start)}-{format_number(end)}"


def to_infotext(args: SafeDenoiserArgs, bank_hash: str, summary: TraceSummary | None) -> dict[str, str]:
    """The pairs to put in ``p.extra_generation_params`` for an enabled job."""
    out = {
        KEY_BANK: args.bank,
        KEY_HASH: bank_hash,
        KEY_PRESET: args.preset,
        KEY_MODE: args.mode,
        KEY_STRENGTH: format_number(args.strength),
        KEY_WINDOW: format_window(args.window_start, args.window_end),
    }
    if args.mode == "odds":
        out[KEY_REFERENCE] = args.reference_bank
        out[KEY_PRIOR] = format_number(args.prior)
    if args.mode == "paper":
        out[KEY_BANDWIDTH] = format_number(args.bandwidth)
        out[KEY_GATE] = format_number(args.gate_margin) if args.gate else "off"
    else:  # the floor is the odds and constant modes' own
        out[KEY_SMOOTHING] = format_number(args.smoothing)
    if summary is not None:
        out[KEY_ACTED] = f"{summary.acted_steps}/{summary.total_steps}"
        out[KEY_MAX_BETA] = format_number(summary.max_beta)
    return out


def policy_infotext(preset: PresetRef | None, notes: Sequence[str] = ()) -> dict[str, str]:
    """Pairs naming a saved preset (name and scope) and what the operator's policy changed, added
    after ``to_infotext``'s, whose numbers stay what really ran.

    A built-in recipe is already named by ``to_infotext`` ("custom" once its numbers changed), so
    only saved presets are named here. Pasting never looks a saved preset up (it may be another
    user's, or gone): the numbers alone reproduce the image.
    """
    out: dict[str, str] = {}
    if preset is not None and preset.scope != SCOPE_BUILTIN:
        out[KEY_PRESET] = preset.name
        out[KEY_PRESET_SCOPE] = preset.scope
    if notes:
        out[KEY_POLICY] = "; ".join(notes)
    return out


def read_window(params: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """(start, end) from a pasted "start-end" infotext pair, or None (missing or unreadable)."""
    start, sep, end = str(params.get(key, "")).partition("-")
    try:
        return (float(start), float(end)) if sep else None
    except ValueError:
        return None


def read_float(params: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a pasted infotext pair, or None (missing, unreadable, inf or nan)."""
    try:
        value = float(params[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def from_infotext(params: Mapping[str, Any]) -> dict[str, Any]:
    """Argument fields recovered from pasted infotext pairs (values as the WebUI parsed them).

    Only what is present and readable comes back, so pasting an image made without the
    extension (no "Safe denoiser" key) gives ``{"enabled": False}``.
    """
    if KEY_BANK not in params:
        return {"enabled": False}
    out: dict[str, Any] = {"enabled": True, "bank": str(params[KEY_BANK])}
    for field, key in (("preset", KEY_PRESET), ("mode", KEY_MODE), ("reference_bank", KEY_REFERENCE)):
        if key in params:
            out[field] = str(params[key])
    if KEY_PRESET_SCOPE in params:  # a saved preset: its numbers are restored, its name is never resolved
        out["preset"] = CUSTOM
    if out.get("mode", "paper") != "paper":  # images from before the floor existed ran without one
        out["smoothing"] = 0.0
    for field, key in (("strength", KEY_STRENGTH), ("prior", KEY_PRIOR), ("bandwidth", KEY_BANDWIDTH),
                       ("smoothing", KEY_SMOOTHING)):
        value = read_float(params, key)
        if value is not None:
            out[field] = value
    window = read_window(params, KEY_WINDOW)
    if window is not None:
        out["window_start"], out["window_end"] = window
    if KEY_GATE in params:
        gate = str(params[KEY_GATE])
        margin = read_float(params, KEY_GATE)
        out["gate"] = gate != "off"
        if margin is not None:
            out["gate_margin"] = margin
    return out
