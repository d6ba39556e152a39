"""A generation job as modules/processing.py runs it, on the stand-in ``modules`` and a tiny model.

The script hooks are called in the WebUI's order and, like its ScriptRunner, any exception a
hook raises is reported and swallowed; an exception of the model propagates out of the job,
as it does out of ``process_images`` (no postprocess). Samplers run as the WebUI runs them:
``Sampler.initialize`` and ``launch_sampling`` (the last latent on an interrupt), k-diffusion's
Euler and Heun loops, and the WebUI's own DDIM, DDIM CFG++ and PLMS loops. The model is the
exact denoiser of a narrow Gaussian around the latent of a picture the prompt names, so what it
generates is known; it predicts eps or, as SD 2.x 768-v does, v, and reaches the CFG denoiser
through the same inner denoisers as a real checkpoint (k-diffusion's CompVis wrappers, the
WebUI's CompVisTimesteps ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from modules import errors, prompt_parser, script_callbacks, scripts, sd_samplers_common, shared
from modules import sd_samplers_timesteps_impl as timesteps_impl
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
from PIL import Image

CHANNELS = 4
SIGMA_DATA = 0.05
"""The spread of the model's Gaussian around a prompt's picture."""
IMG2IMG_STRENGTH = 0.5
"""Denoising strength of the hires pass."""


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

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Back to pixels in [-1, 1] (differentiable, as the concept steering needs): the channel mix
        inverted by least squares, upsampled 8x."""
        unmix = torch.linalg.pinv(self.mix.weight[:, :, 0, 0])  # [3, 4]
        pixels = torch.einsum("ck,bkhw->bchw", unmix.to(z.dtype), z)
        return torch.tanh(torch.nn.functional.interpolate(pixels, scale_factor=8, mode="nearest"))


class TinyModel:
    """What ``shared.sd_model`` offers: family flags, schedule, first stage and ``apply_model``.

    ``fail_at`` makes the n-th model call (0-based) raise, as an out-of-memory error would.
    """

    def __init__(self, **flags: Any) -> None:
        self.alphas_cumprod = sd_alphas_cumprod()
        self.parameterization = "eps"
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_sd3 = True, False, False, False
        self.cond_stage_key = "crossattn"
        self.sd_model_hash = "tiny0001"
        self.first_stage_model = TinyVAE()
        self.scale_factor = 0.5  # get_first_stage_encoding's
        self.fail_at: int | None = None
        self.model_calls = 0
        self.__dict__.update(flags)

    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model(x)

    def get_first_stage_encoding(self, z: torch.Tensor) -> torch.Tensor:
        return z * 0.5

    def _posterior_mean(self, x: torch.Tensor, sigma: float, prompt: int) -> torch.Tensor:
        """E[x0 | x0 + sigma eps = x] when a prompt draws its pictures' latents, each with spread SIGMA_DATA."""
        parts = DRAWS.get(prompt, [(prompt, 1.0)])
        means = torch.stack([picture_latent(self, picture, tuple(x.shape[-2:])) for picture, _ in parts])
        var = SIGMA_DATA**2 + sigma**2
        log_w = torch.tensor([w for _, w in parts]).log() - ((x - means) ** 2).flatten(1).sum(1) / (2 * var)
        resp = torch.softmax(log_w, 0).reshape(-1, 1, 1, 1)
        return ((SIGMA_DATA**2 * x + sigma**2 * means) / var * resp).sum(0)

    @property
    def log_sigmas(self) -> torch.Tensor:
        return (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """k-diffusion's DiscreteSchedule.t_to_sigma: fractional timesteps, interpolated in log sigma."""
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """k-diffusion's DiscreteSchedule.sigma_to_t (not quantized)."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The UNet's output for VP latents ``x`` at DDPM timesteps ``t``: eps, or v for a v model."""
        call, self.model_calls = self.model_calls, self.model_calls + 1
        if self.fail_at is not None and call == self.fail_at:
            raise RuntimeError("CUDA out of memory (the stand-in model's failure)")
        if isinstance(cond, dict):  # SDXL: {"crossattn": ..., "vector": ...}
            cond = cond["crossattn"]
        sigma = self.t_to_sigma(t).reshape(-1, 1, 1, 1)
        a = 1 / (1 + sigma**2)
        x_k = x / a.sqrt()  # x0 + sigma eps
        x0 = torch.stack([self._posterior_mean(x_k[i], float(sigma[i]), int(c[0, 0])) for i, c in enumerate(cond)])
        eps = (x_k - x0) / sigma
        return a.sqrt() * eps - (1 - a).sqrt() * x0 if self.parameterization == "v" else eps


class KDiffusionDenoiser(torch.nn.Module):
    """k_diffusion.external.CompVisDenoiser / CompVisVDenoiser: x0 predictions from the UNet's eps or v,
    what CFGDenoiserKDiffusion.inner_model builds for the loaded model."""

    def __init__(self, model: TinyModel) -> None:
        super().__init__()
        self.inner_model = model
        self.sigmas = model.log_sigmas.exp()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1) ** 0.5
        out = self.inner_model.apply_model(x * c_in, self.inner_model.sigma_to_t(sigma), cond=cond)
        if self.inner_model.parameterization == "v":
            return x / (s**2 + 1) + out * (-s / (s**2 + 1) ** 0.5)
        return x + out * (-s)

    def get_sigmas(self, n: int) -> torch.Tensor:
        """DiscreteSchedule.get_sigmas: the schedule the WebUI's "Automatic" gives Euler and Heun."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.inner_model.t_to_sigma(t), t.new_zeros([1])])


PICTURES: dict[int, Image.Image] = {}
"""What the model draws for a prompt, by the prompt's id; prompts without a picture draw grey."""
UNSAFE = 1
"""The prompt whose picture the "unsafe" bank holds (jittered copies of it)."""
SAFE = (2, 101, 102, 103, 104, 105, 106, 107)
"""The prompts whose pictures the safe "reference" bank holds."""
EITHER = 3
"""A prompt that draws the bank's picture or, rarely, one of the safe ones, as a real model's prompt
covers safe and unsafe images: where the correction moves a sample towards the safe set, the
model's own prediction then keeps it there."""
DRAWS: dict[int, list[tuple[int, float]]] = {EITHER: [(UNSAFE, 0.99), *((s, 0.01 / len(SAFE)) for s in SAFE)]}
"""Prompts that draw one of several pictures: (picture's prompt id, probability)."""


_LATENTS: dict[tuple[int, int, tuple[int, int]], torch.Tensor] = {}
"""Pictures' latents by (picture object, channels, size): every TinyVAE is the same, every call reads them."""


def picture_latent(model: TinyModel, prompt: int, hw: tuple[int, int]) -> torch.Tensor:
    """The VAE latent [C, h, w] of a prompt's picture at latent size ``hw``."""
    h, w = hw
    channels = model.first_stage_model.mix.out_channels
    if prompt not in PICTURES:
        return torch.zeros(channels, h, w)
    key = (id(PICTURES[prompt]), channels, hw)
    if key not in _LATENTS:
        img = PICTURES[prompt].convert("RGB").resize((8 * w, 8 * h), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            _LATENTS[key] = model.get_first_stage_encoding(model.first_stage_model.encode(pixels * 2 - 1))[0]
    return _LATENTS[key]


# ------------------------------------------------------------------------------------------ samplers
@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k_diffusion.sampling.sample_euler (s_churn = 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k_diffusion.sampling.sample_heun (s_churn = 0): a second model call per step but the last."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


K_SAMPLERS = {"euler": (sample_euler, {}), "heun": (sample_heun, {"second_order": True})}
TIMESTEP_SAMPLERS = {"ddim": timesteps_impl.ddim, "ddim_cfgpp": timesteps_impl.ddim_cfgpp, "plms": timesteps_impl.plms}
SAMPLERS = (*K_SAMPLERS, *TIMESTEP_SAMPLERS)


class _KDiffusionCFG(CFGDenoiser):
    """CFGDenoiserKDiffusion: its inner model is k-diffusion's wrapper of the loaded model."""

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = KDiffusionDenoiser(shared.sd_model)
        return self.model_wrap


def _timesteps(steps: int) -> torch.Tensor:
    """CompVisSampler.get_timesteps."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def _img2img_steps(strength: float, steps: int) -> int:
    """sd_samplers_common.setup_img2img_steps (t_enc; img2img_fix_steps off)."""
    return int(min(strength, 0.999) * steps)


# ------------------------------------------------------------------------------------------ the job
@dataclass
class Processing:
    """The fields of StableDiffusionProcessing the glue and the samplers read and write."""

    sd_model: Any
    cfg_scale: float = 1.0
    s_min_uncond: float = 0.0
    denoising_strength: float = 1.0
    is_hr_pass: bool = False
    mask: torch.Tensor | None = None
    nmask: torch.Tensor | None = None
    init_latent: torch.Tensor | None = None
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
class CfgCall:
    """One call of the CFG denoiser as a probe saw it. ``rows`` is the model-output tensor itself,
    edited in place by the on_cfg_denoised callbacks; ``rows_before`` a copy taken before them."""

    denoiser: Any
    x_in: torch.Tensor
    sigma_in: torch.Tensor
    conds_list: list[list[tuple[int, float]]]
    rows_before: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    denoised: torch.Tensor | None = None
    preview: torch.Tensor | None = None
    last_noise_uncond: torch.Tensor | None = None


class Probe:
    """Watches every CFG denoiser call of a job: registered before the job's own callbacks, so it
    sees the model outputs before they are steered, and wrapping the CFG denoiser's forward for
    what it returns (after every on_cfg_after_cfg callback) and the live preview it stored."""

    def __init__(self) -> None:
        self.calls: list[CfgCall] = []

    def register(self) -> None:
        script_callbacks.on_cfg_denoiser(self._on_denoiser, name="probe")
        script_callbacks.on_cfg_denoised(self._on_denoised, name="probe")

    def remove(self) -> None:
        script_callbacks.remove_callbacks_for_function(self._on_denoiser)
        script_callbacks.remove_callbacks_for_function(self._on_denoised)

    def watch(self, den: CFGDenoiser) -> None:
        forward = den.forward

        def recording_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = forward(*args, **kwargs)
            call = self.calls[-1]
            call.denoised, call.preview = out.clone(), sd_samplers_common.previews[-1]
            if den.last_noise_uncond is not None:
                call.last_noise_uncond = den.last_noise_uncond.clone()
            return out

        den.forward = recording_forward

    def _on_denoiser(self, params: script_callbacks.CFGDenoiserParams) -> None:
        den = params.denoiser
        conds_list, _ = prompt_parser.reconstruct_multicond_batch(den.sampler.sampler_extra_args["cond"], den.step)
        self.calls.append(CfgCall(den, params.x.clone(), params.sigma.clone(), conds_list))

    def _on_denoised(self, params: script_callbacks.CFGDenoisedParams) -> None:
        self.calls[-1].rows_before, self.calls[-1].rows = params.x.clone(), params.x


@dataclass
class JobResult:
    images: list[torch.Tensor]
    """Every batch's images, as postprocess_batch_list left them."""
    samples: torch.Tensor
    """The last batch's latents as the job decodes them (for inpainting, after the WebUI's mask blend)."""
    previews: list[torch.Tensor]
    p: Processing
    sampled: torch.Tensor | None = None
    """What the sampler returned for the last batch, before the inpainting blend."""
    infotexts: list[dict[str, Any]] = field(default_factory=list)
    """p.extra_generation_params as each batch's images were saved with them."""


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
            xyz: dict[str, Any] | None = None, probe: Probe | None = None,
            model_fails_at: int | None = None, n_iter: int = 1) -> JobResult:
    """One txt2img job (img2img inpainting with ``mask`` and ``init_latent``; a hires pass with ``hires_hw``).

    ``interrupt_at``: the user presses Interrupt after that many sampling steps. ``model_fails_at``:
    the model raises in that CFG call (0-based) and the exception leaves the job, as it leaves
    ``process_images``. ``probe`` watches every CFG denoiser call. ``n_iter`` batches run one after
    the other (the WebUI's batch count), each with its own noise.
    """
    prompts = prompts or [[(1, 1.0)], [(2, 1.0)]]
    p = p or Processing(sd_model=shared.sd_model)
    if xyz:
        p.safe_denoiser_xyz = xyz
    if mask is not None:
        p.mask, p.nmask, p.init_latent = mask, 1 - mask, init_latent
    shared.state.begin()
    sd_samplers_common.previews.clear()
    model = shared.sd_model
    if model_fails_at is not None:
        model.fail_at = model.model_calls + model_fails_at
    if probe is not None:
        probe.register()
    try:
        return _process_images(script, args, p, sampler, steps, prompts, hw, hires_hw, interrupt_at, seed, probe,
                               n_iter)
    finally:
        model.fail_at = None
        if probe is not None:
            probe.remove()


def _process_images(script: Any, args: list[Any], p: Processing, sampler: str, steps: int,
                    prompts: list[list[tuple[int, float]]], hw: tuple[int, int], hires_hw: tuple[int, int] | None,
                    interrupt_at: int | None, seed: int, probe: Probe | None, n_iter: int) -> JobResult:
    _call(script, "before_process", p, *args)
    _call(script, "process", p, *args)
    gen = torch.Generator().manual_seed(seed)
    result = JobResult([], torch.zeros(0, CHANNELS, *hw), [], p)
    for n in range(n_iter):
        if shared.state.interrupted:  # process_images_inner checks before every batch
            break
        noise = torch.randn(len(prompts), CHANNELS, *hw, generator=gen)
        sampled = _sample(script, args, p, sampler, steps, prompts, noise, p.init_latent, interrupt_at, probe)
        samples = sampled
        if p.mask is not None:  # StableDiffusionProcessingImg2Img.sample
            samples = sampled * p.nmask + p.init_latent * p.mask
        if hires_hw is not None and not shared.state.interrupted:
            p.is_hr_pass = True
            up = torch.nn.functional.interpolate(samples, size=hires_hw, mode="nearest")
            hr_noise = torch.randn(up.shape, generator=gen)
            strength, p.denoising_strength = p.denoising_strength, IMG2IMG_STRENGTH
            samples = _sample(script, args, p, sampler, steps, prompts, hr_noise, up, None, probe)
            p.denoising_strength = strength
            p.is_hr_pass = False
        pp = scripts.PostprocessBatchListArgs(list(samples))
        _call(script, "postprocess_batch_list", p, pp, *args, batch_number=n)
        result.images += pp.images
        result.samples, result.sampled = samples, sampled
        result.infotexts.append(dict(p.extra_generation_params))
    result.previews = list(sd_samplers_common.previews)
    _call(script, "postprocess", p, object(), *args)
    return result


def _sample(script: Any, args: list[Any], p: Processing, name: str, steps: int,
            prompts: list[list[tuple[int, float]]], noise: torch.Tensor, init: torch.Tensor | None,
            interrupt_at: int | None, probe: Probe | None) -> torch.Tensor:
    """p.sample / sample_hr_pass: txt2img from ``noise``, or img2img from ``init`` at p.denoising_strength."""
    _call(script, "process_before_every_sampling", p, *args, x=noise if init is None else init, noise=noise,
          c=None, uc=None)
    timesteps = name in TIMESTEP_SAMPLERS
    func, options = (TIMESTEP_SAMPLERS[name], {}) if timesteps else K_SAMPLERS[name]
    sampler = sd_samplers_common.Sampler(func)
    sampler.config = sd_samplers_common.SamplerData(name, None, [name], options)
    den = CFGDenoiserTimesteps(sampler) if timesteps else _KDiffusionCFG(sampler)
    sampler.model_wrap_cfg = den
    if probe is not None:
        probe.watch(den)
    sampler.initialize(p)

    def callback_state(d: dict[str, Any]) -> None:
        sampler.callback_state(d)
        if interrupt_at is not None and d["i"] + 1 == interrupt_at:
            shared.state.interrupt()  # the user presses Interrupt during this step

    cond = multicond(prompts)
    uncond = [[prompt_parser.ScheduledPromptConditioning(1000, prompt_cond(0))] for _ in prompts]
    t_enc = steps if init is None else _img2img_steps(p.denoising_strength, steps)
    if timesteps:
        ts = _timesteps(steps)
        x = noise
        if init is not None:
            ts, a = ts[:t_enc], shared.sd_model.alphas_cumprod[ts[t_enc]]
            x = init * a.sqrt() + noise * (1 - a).sqrt()
            den.init_latent = init
        run = lambda: func(den, x, ts, extra_args=sampler.sampler_extra_args, callback=callback_state)  # noqa: E731
    else:
        sigmas = den.inner_model.get_sigmas(steps)
        if init is None:
            x = noise * sigmas[0]
        else:
            sigmas = sigmas[steps - t_enc - 1:]
            x = init + noise * sigmas[0]
            den.init_latent = init
        run = lambda: func(den, x, sigmas, extra_args=sampler.sampler_extra_args, callback=callback_state)  # noqa: E731
    sampler.last_latent = x if init is None else init
    sampler.sampler_extra_args = {"cond": cond, "image_cond": torch.zeros(noise.shape[0], 1), "uncond": uncond,
                                  "cond_scale": p.cfg_scale, "s_min_uncond": sampler.s_min_uncond}
    return sampler.launch_sampling(steps if init is None else t_enc + 1, run)
