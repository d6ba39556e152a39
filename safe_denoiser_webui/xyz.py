"""How X/Y/Z-plot axes hand their values to the accordion's script: a dict of field overrides on
the processing object, validated with the rest of the arguments when the job starts."""

from __future__ import annotations

from typing import Any

XYZ_ATTR = "safe_denoiser_xyz"
"""Attribute of the processing object where XYZ-plot axes put the fields they override."""


def override(field: str, convert: Any):
    """An axis ``apply`` function setting one argument field for the cell being generated."""

    def apply(p: Any, x: Any, xs: Any) -> None:
        setattr(p, XYZ_ATTR, {**(getattr(p, XYZ_ATTR, None) or {}), field: convert(x)})

    return apply


def as_bool(x: Any) -> bool:
    return str(x).strip().lower() in ("true", "1", "yes", "on")
