"""modules/sd_samplers_timesteps.py: the CFG denoiser of DDIM, PLMS, UniPC and DDIM CFG++.

Its sigma is the DDPM timestep as a float, its inputs VP latents and its outputs eps.
"""

from __future__ import annotations

from modules import shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        ts = sigma.to(dtype=int)
        a_t = self.alphas[ts][:, None, None, None]
        sqrt_one_minus_at = (1 - a_t).sqrt()
        return (x_in - sqrt_one_minus_at * x_out) / a_t.sqrt()
