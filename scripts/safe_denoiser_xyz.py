"""WebUI glue: the safe denoiser's axes in the built-in X/Y/Z plot script."""

from __future__ import annotations

from modules import script_callbacks, scripts

from lib_safe_denoiser.core.config import MODES
from lib_safe_denoiser.policy.bank_access import visible_names
from safe_denoiser_webui.services import STORE
from safe_denoiser_webui.users import current_user
from safe_denoiser_webui.xyz import as_bool, override


def shared_bank_names() -> list[str]:
    """The axis' choices: the plot script has no user at hand, so only banks everyone may use (a job
    still checks the bank against its own user)."""
    return visible_names(STORE, current_user(None))


def add_xyz_axes() -> None:
    """Register the axes with the built-in X/Y/Z plot script, if it is loaded (once per UI build)."""
    xyz = next((d.module for d in scripts.scripts_data
                if d.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(d, "module")), None)
    if xyz is None:
        return
    axes = [
        xyz.AxisOption("[Safe Denoiser] Enabled", str, override("enabled", as_bool),
                       choices=lambda: ["True", "False"]),
        xyz.AxisOption("[Safe Denoiser] Strength", float, override("strength", float)),
        xyz.AxisOption("[Safe Denoiser] Bank", str, override("bank", str), choices=shared_bank_names),
        xyz.AxisOption("[Safe Denoiser] Mode", str, override("mode", str), choices=lambda: list(MODES)),
        xyz.AxisOption("[Safe Denoiser] Window start", float, override("window_start", float)),
        xyz.AxisOption("[Safe Denoiser] Window end", float, override("window_end", float)),
        xyz.AxisOption("[Safe Denoiser] Bandwidth floor", float, override("smoothing", float)),
        xyz.AxisOption("[Safe Denoiser] Concepts", str, override("concepts", str)),
        xyz.AxisOption("[Safe Denoiser] Concept eta", float, override("concept_eta", float)),
        xyz.AxisOption("[Safe Denoiser] Concept gamma", float, override("concept_gamma", float)),
    ]
    known = {a.label for a in xyz.axis_options}
    xyz.axis_options.extend(a for a in axes if a.label not in known)


script_callbacks.on_before_ui(add_xyz_axes)
