"""modules/sd_samplers_common.py: VAE encoding, the live-preview store and the Sampler base class.

Sampler keeps what the CFG denoiser and the glue see: ``initialize`` hands ``p`` and the mask to
the CFG denoiser, ``launch_sampling`` sets its step count and returns the last latent on an
interrupt, ``callback_state`` advances ``state.sampling_step``. Noise hijacking, schedulers and
infotext are left out.
"""

from __future__ import annotations

from collections import namedtuple

import torch

from modules import shared

SamplerDataTuple = namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2

        return steps


class InterruptedException(BaseException):
    pass


previews: list[torch.Tensor] = []
"""What store_latent received (the real one renders it as the live preview)."""


def store_latent(decoded: torch.Tensor) -> None:
    shared.state.current_latent = decoded
    previews.append(decoded.clone())


def images_tensor_to_samples(image, approximation=None, model=None):
    """image [0, 1] -> latent, with the model's first stage, one image at a time as the real one does."""
    if model is None:
        model = shared.sd_model
    image = image * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.stop_at = None
        self.eta = None
        self.config = None  # SamplerData; set by the function calling the constructor
        self.last_latent = None
        self.s_min_uncond = None
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        step = d['i']

        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException

        shared.state.sampling_step = step

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        shared.state.sampling_steps = steps
        shared.state.sampling_step = 0

        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, 'mask') else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, 'nmask') else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.eta = p.eta if getattr(p, 'eta', None) is not None else 0.0
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)
        return {}
