"""A generation job as modules/processing.py runs it, on the stand-in ``modules`` and a tiny model.

The script hooks are called in the WebUI's order and, like its ScriptRunner, any exception a
hook raises is reported and swallowed; sampling stops with the sampler's last latent on an
interrupt, as ``Sampler.launch_sampling`` does. The "model" is the exact denoiser of a narrow
Gaussian around the latent of a picture the prompt names, so what it generates is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from modules import errors, prompt_parser, scripts, sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
from PIL import Image

from lib_safe_denoiser.core.schedules import karras_sigmas

CHANNELS = 4
SIGMA_DATA = 0.05
SIGMA_MAX = 14.6


def sd_alphas_cumprod() -> torch.Tensor:
    """SD 1.x's scaled-linear schedule (beta 0.00085 .. 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class TinyVAE(torch.nn.Module):
    """First stage: 8x8 average pooling and a fixed 3 -> 4 channel mix (a real, deterministic encoder)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.mix = torch.nn.Conv2d(3, CHANNELS, 1, bias=False)
        self.mix.weight.data = torch.randn(CHANNELS, 3, 1, 1, generator=gen)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Not counted: how the model side draws its pictures."""
        return self.mix(torch.nn.functional.avg_pool2d(x, 8))


class TinyModel:
    """What ``shared.sd_model`` offers the glue: family flags, schedule, first stage."""

    def __init__(self, **flags: Any) -> None:
        self.alphas_cumprod = sd_alphas_cumprod()
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_sd3 = True, False, False, False
        self.cond_stage_key = "crossattn"
        self.sd_model_hash = "tiny0001"
        self.first_stage_model = TinyVAE()
        self.__dict__.update(flags)

    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model(x)

    def get_first_stage_encoding(self, z: torch.Tensor) -> torch.Tensor:
        return z * 0.5


PICTURES: dict[int, Image.Image] = {}
"""What the model draws for a prompt, by the prompt's id; prompts without a picture draw grey."""


def picture_latent(model: TinyModel, prompt: int, hw: tuple[int, int]) -> torch.Tensor:
    """The VAE latent [C, h, w] of a prompt's picture at latent size ``hw``."""
    h, w = hw
    if prompt not in PICTURES:
        return torch.zeros(CHANNELS, h, w)
    img = PICTURES[prompt].convert("RGB").resize((8 * w, 8 * h), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model.get_first_stage_encoding(model.first_stage_model.encode(pixels * 2 - 1))[0]


class InnerModel(torch.nn.Module):
    """x0 prediction of a Gaussian N(latent of the prompt's picture, SIGMA_DATA^2) at noise level sigma."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if isinstance(cond, dict):  # SDXL: {"crossattn": ..., "vector": ...}
            cond = cond["crossattn"]
        target = torch.stack([picture_latent(shared.sd_model, int(c[0, 0]), tuple(x.shape[-2:])) for c in cond])
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return (SIGMA_DATA**2 * x + s2 * target) / (s2 + SIGMA_DATA**2)


class InnerEpsModel(torch.nn.Module):
    """The same model for timestep samplers: VP latents and DDPM timesteps in, eps out."""

    def __init__(self, alphas: torch.Tensor) -> None:
        super().__init__()
        self.alphas = alphas
        self.x0_model = InnerModel()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        a = self.alphas[t.to(int)].reshape(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        x0 = self.x0_model(x / a.sqrt(), sigma.flatten(), cond)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


@dataclass
class Sampler:
    """The sampler side that CFGDenoiser reads: extra args and the last latent."""

    sampler_extra_args: dict[str, Any] = field(default_factory=dict)
    last_latent: torch.Tensor | None = None
    s_min_uncond: float = 0.0


@dataclass
class Processing:
    """The fields of StableDiffusionProcessing the glue reads and writes."""

    sd_model: Any
    cfg_scale: float = 1.0
    is_img2img: bool = False
    is_hr_pass: bool = False
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, int] = field(default_factory=dict)

    def comment(self, text: str) -> None:
        self.comments[text] = 1


SDXL_CONDS = False
"""Whether prompts are embedded as SDXL's dicts (crossattn and pooled vector) instead of tensors."""


def prompt_cond(prompt: int) -> Any:
    """A prompt's embedding [tokens=2, dim=12]; the model reads the prompt's id from it."""
    crossattn = torch.full((2, 12), float(prompt))
    return {"crossattn": crossattn, "vector": torch.full((6,), float(prompt))} if SDXL_CONDS else crossattn


def multicond(prompts: list[list[tuple[int, float]]]) -> prompt_parser.MulticondLearnedConditioning:
    """Per image, its AND-subprompts as (prompt id, weight)."""
    batch = [[prompt_parser.ComposableScheduledPromptConditioning(
        [prompt_parser.ScheduledPromptConditioning(1000, prompt_cond(seed))], weight) for seed, weight in image]
        for image in prompts]
    return prompt_parser.MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


@dataclass
class JobResult:
    images: list[torch.Tensor]
    samples: torch.Tensor
    previews: list[torch.Tensor]
    p: Processing


def _call(script: Any, hook: str, *args: Any, **kwargs: Any) -> None:
    if script is None:
        return
    try:
        getattr(script, hook)(*args, **kwargs)
    except Exception:
        errors.report(f"Error running {hook}", exc_info=True)


def run_job(script: Any, args: list[Any], *, p: Processing | None = None, sampler: str = "euler", steps: int = 10,
            prompts: list[list[tuple[int, float]]] | None = None, hw: tuple[int, int] = (8, 8),
            hires_hw: tuple[int, int] | None = None, mask: torch.Tensor | None = None,
            init_latent: torch.Tensor | None = None, interrupt_at: int | None = None, seed: int = 0,
            xyz: dict[str, Any] | None = None) -> JobResult:
    """One txt2img job (img2img inpainting with ``mask`` and ``init_latent``; a hires pass with ``hires_hw``)."""
    prompts = prompts or [[(1, 1.0)], [(2, 1.0)]]
    p = p or Processing(sd_model=shared.sd_model)
    if xyz:
        p.safe_denoiser_xyz = xyz
    shared.state.begin()
    sd_samplers_common.previews.clear()
    _call(script, "before_process", p, *args)
    _call(script, "process", p, *args)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), CHANNELS, *hw, generator=gen)
    if shared.state.interrupted:  # process_images_inner checks before every batch
        _call(script, "postprocess", p, object(), *args)
        return JobResult([], noise[:0], [], p)
    samples = _sample(script, args, p, sampler, steps, prompts, noise, mask, init_latent, interrupt_at)
    if hires_hw is not None and not shared.state.interrupted:
        p.is_hr_pass = True
        up = torch.nn.functional.interpolate(samples, size=hires_hw, mode="nearest")
        samples = _sample(script, args, p, sampler, steps, prompts, up + 0.3 * torch.randn(up.shape, generator=gen),
                          None, None, None, start_sigma=0.3)
        p.is_hr_pass = False
    pp = scripts.PostprocessBatchListArgs(list(samples))
    _call(script, "postprocess_batch_list", p, pp, *args, batch_number=0)
    previews = list(sd_samplers_common.previews)
    _call(script, "postprocess", p, object(), *args)
    return JobResult(pp.images, samples, previews, p)


def _sample(script: Any, args: list[Any], p: Processing, sampler: str, steps: int,
            prompts: list[list[tuple[int, float]]], noise: torch.Tensor, mask: torch.Tensor | None,
            init_latent: torch.Tensor | None, interrupt_at: int | None,
            start_sigma: float | None = None) -> torch.Tensor:
    _call(script, "process_before_every_sampling", p, *args, x=noise, noise=noise, c=None, uc=None)
    cond = multicond(prompts)
    uncond = [[prompt_parser.ScheduledPromptConditioning(1000, prompt_cond(0))] for _ in prompts]
    s = Sampler(sampler_extra_args={"cond": cond, "uncond": uncond})
    timesteps = sampler == "ddim"
    den = CFGDenoiserTimesteps(s) if timesteps else CFGDenoiser(s)
    den.p, den.total_steps = p, steps
    den.model_wrap = InnerEpsModel(shared.sd_model.alphas_cumprod) if timesteps else InnerModel()
    if mask is not None:
        den.mask, den.nmask, den.init_latent = mask, 1 - mask, init_latent
    image_cond = torch.zeros(noise.shape[0], 1)

    def model(x: torch.Tensor, sig: torch.Tensor, i: int) -> torch.Tensor:
        if interrupt_at is not None and i == interrupt_at:
            shared.state.interrupt()
        shared.state.sampling_step = i
        return den(x, sig, uncond, cond, p.cfg_scale, s.s_min_uncond, image_cond)

    s.last_latent = noise if timesteps else noise * (start_sigma or SIGMA_MAX)  # as sample() sets it
    try:
        if timesteps:
            return _ddim(model, noise, steps, shared.sd_model.alphas_cumprod)
        return _euler(model, noise, steps, start_sigma)
    except sd_samplers_common.InterruptedException:
        return s.last_latent


def _euler(model: Any, noise: torch.Tensor, steps: int, start_sigma: float | None) -> torch.Tensor:
    sigmas = karras_sigmas(steps, 0.03, start_sigma or SIGMA_MAX).tolist()
    x = noise * sigmas[0]
    for i, (sig, nxt) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        d = model(x, torch.full((x.shape[0],), sig), i)
        x = x + (nxt - sig) * (x - d) / sig
    return x


def _ddim(model: Any, noise: torch.Tensor, steps: int, alphas: torch.Tensor) -> torch.Tensor:
    ts = torch.linspace(999, 0, steps).round().long().tolist()
    x = noise
    for i, t in enumerate(ts):
        a = float(alphas[t])
        eps = model(x, torch.full((x.shape[0],), float(t)), i)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        a_next = float(alphas[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return x
