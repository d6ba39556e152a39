"""Independent expectations for a steered job, computed from what a Probe saw and the stand-in's own code.

The WebUI combines a step's rows as ``uncond + sum_j w_j * scale * (cond_j - uncond)``: the
coefficients sum to 1, so adding the same change to every row of an image changes its combined
prediction by exactly that change, whatever the scale, the AND weights or a skipped uncond pass.
The prediction the WebUI would have made without the extension is therefore the one it made
less the change of the image's uncond row, and the extension's promise is that what it made is
the safe denoiser's correction of that, in the sampler's parametrisation. eps and x0 are mapped
with the stand-in's ``get_pred_x0``, the WebUI's own formula.
"""

from __future__ import annotations

import torch
from modules import shared
from modules.sd_samplers_timesteps import CFGDenoiserTimesteps

from lib_safe_denoiser.core.denoiser import SafeDenoiser
from tests.glue.conftest import last_job
from tests.glue.harness import CfgCall

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
"""float32 through eps <-> x0 at the noisiest DDPM timestep (sqrt(alpha_bar) ~ 0.07)."""


def job_denoiser(glue, is_img2img: bool = False, hw: tuple[int, int] = (8, 8)) -> SafeDenoiser:
    """The SafeDenoiser the last job on a tab steered with (the factory's cached one)."""
    job = last_job(glue, is_img2img)
    return glue.FACTORY.build(job, alphas_cumprod=shared.sd_model.alphas_cumprod,
                              encoder=glue.encoder_for(shared.sd_model), vae_id=glue.vae_id(shared.sd_model),
                              latent_shape=(4, *hw))


def first_cond_rows(call: CfgCall) -> list[int]:
    return [conds[0][0] for conds in call.conds_list]


def row_change(call: CfgCall) -> torch.Tensor:
    """The change of each image's rows [n, ...]; asserts that every row of an image changed alike."""
    n, change = len(call.conds_list), call.rows - call.rows_before
    for i, conds in enumerate(call.conds_list):
        for row in [r for r, _ in conds]:
            torch.testing.assert_close(change[row], change[change.shape[0] - n + i], rtol=0, atol=1e-5)
    return change[-n:]


def to_x0(call: CfgCall, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x0 of model outputs for the image rows ``x`` (identity for k-diffusion x0 outputs)."""
    n = len(call.conds_list)
    return call.denoiser.get_pred_x0(x, out, call.sigma_in[-n:])


def blend_after(call: CfgCall, x0: torch.Tensor) -> torch.Tensor:
    """The inpainting blend k-diffusion samplers apply to the combined prediction (timestep samplers
    blend the input instead)."""
    den = call.denoiser
    if den.mask is None or den.mask_before_denoising:
        return x0
    return x0 * den.nmask + den.init_latent * den.mask


def expected_x0(call: CfgCall, safe: SafeDenoiser, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the WebUI's unsteered combined x0, its correction by ``safe``) for one CFG call.

    Without ``scale`` the unsteered prediction is what the WebUI returned less the rows' change;
    with it (needed where the WebUI blends its prediction with an inpainting original), the
    stand-in's own combination of the rows the model returned.
    """
    n = len(call.conds_list)
    x_img, sigma = call.x_in[-n:], call.sigma_in[-n:]
    if scale is None:
        combined = call.denoised - row_change(call)
    else:
        combined = call.denoiser.combine_denoised(call.rows_before, call.conds_list, call.rows_before[-n:], scale)
    unsteered = to_x0(call, x_img, combined)
    if isinstance(call.denoiser, CFGDenoiserTimesteps):
        a = call.denoiser.alphas[sigma.to(int)].double()
        x_k, sigma_k = x_img / a.sqrt().reshape(-1, 1, 1, 1).float(), ((1 - a) / a).sqrt()
    else:
        x_k, sigma_k = x_img, sigma
    return unsteered, safe.correct(x_k, sigma_k, unsteered)


def assert_every_call_corrected(calls: list[CfgCall], safe: SafeDenoiser, scale: float | None = None) -> int:
    """Every CFG call returned the correction of the WebUI's own unsteered prediction; returns how
    many calls the correction changed."""
    assert calls and all(c.denoised is not None for c in calls)
    changed = 0
    for call in calls:
        unsteered, expected = expected_x0(call, safe, scale)
        n = len(call.conds_list)
        torch.testing.assert_close(to_x0(call, call.x_in[-n:], call.denoised), blend_after(call, expected),
                                   **TOLERANCE)
        changed += int(not torch.allclose(expected, unsteered, rtol=0, atol=1e-3))
    return changed
