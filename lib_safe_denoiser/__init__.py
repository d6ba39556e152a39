"""Training-free safe denoiser (Kim et al., arXiv 2502.08011) for diffusion sampling.

The public API, stable for other extensions and notebooks::

    from lib_safe_denoiser import SafeDenoiser, SafeDenoiserConfig

    sd = SafeDenoiser(bank_latents, reference_latents, SafeDenoiserConfig(mode="odds", strength=3.0))
    x0 = sd.correct(x_t, sigma, model_x0)      # k-diffusion parametrisation
    sd.last_diagnostics                         # per-row beta, log-odds, nearest bank entries

Nothing here imports the Stable Diffusion WebUI.
"""

from lib_safe_denoiser.core.config import MODES, SafeDenoiserConfig
from lib_safe_denoiser.core.denoiser import Diagnostics, SafeDenoiser
from lib_safe_denoiser.core.schedules import (
    eps_to_x0,
    karras_sigmas,
    sigma_to_timestep,
    sigma_window_for_steps,
    timestep_to_sigma,
    x0_to_eps,
)

__version__ = "0.2.0"

__all__ = [
    "MODES",
    "Diagnostics",
    "SafeDenoiser",
    "SafeDenoiserConfig",
    "eps_to_x0",
    "karras_sigmas",
    "sigma_to_timestep",
    "sigma_window_for_steps",
    "timestep_to_sigma",
    "x0_to_eps",
]
