"""The official recipes of the paper (docs/method.md), as read-only presets.

Users pick what they are negating; the recipe sets the numbers; advanced users override them.
Windows are fractions of the diffusion timeline (0 = pure noise, 1 = clean image): the paper's
"DDPM t in [780, 1000]" is 0..0.22 and "the first 12 of 50 steps" 0..0.24.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Preset:
    name: str
    mode: str
    strength: float
    bandwidth: float
    gate: bool
    window: tuple[float, float]
    cfg_scale: float
    description: str


CUSTOM = "custom"

_PRESETS = (
    Preset("nudity (SD 1.x)", "paper", 0.33, 3.15, True, (0.0, 0.22), 7.5,
           "Nudity / inappropriate content; the paper's SD 1.4 recipe (bank of 515 images)."),
    # bandwidth 1: its config says 3.55, but the official code runs it through the ``_fast`` kernels,
    # which never read the config's sigma and use their default of 1 (repellency_methods_fast.py)
    Preset("inappropriate, broad (I2P)", "paper", 0.03, 1.0, False, (0.0, 0.2), 7.5,
           "All I2P categories with a large bank (3,000 images): a light, always-on correction."),
    Preset("a person / memorised image", "paper", 0.69, 13.15, False, (0.0, 0.24), 3.5,
           "A person who asked to be forgotten, or a memorised training image (a few photos)."),
    Preset("an artwork / style", "paper", 0.9, 13.15, False, (0.0, 0.24), 2.0,
           "A copyrighted artwork or an artist's style (a few images)."),
)

PRESETS: MappingProxyType[str, Preset] = MappingProxyType({p.name: p for p in _PRESETS})
DEFAULT_PRESET = _PRESETS[0].name


def preset_names() -> list[str]:
    """The presets in display order, then "custom" (the user's own numbers)."""
    return [*PRESETS, CUSTOM]


def preset_fields(name: str) -> dict[str, object]:
    """The argument fields a preset sets; {} for "custom"; KeyError naming the choices otherwise."""
    if name == CUSTOM:
        return {}
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {preset_names()}")
    p = PRESETS[name]
    return {"mode": p.mode, "strength": p.strength, "bandwidth": p.bandwidth, "gate": p.gate,
            "window_start": p.window[0], "window_end": p.window[1]}
