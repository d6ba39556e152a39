"""A reference implementation of the official safe denoiser loop, for the parity benchmark and tests only.

Transcribed from the paper's code (github MingyuKim87/Safe_Denoiser):
``repellency/repellency_methods_threshold.py`` (``kernel_fast``: RBFKernelRepellency, ``project``,
``set_noisy_proj_ref``, ``empirical_beta``) and
``models/textuals_visual/modified_safree_diffusion_pipeline_threshold_time.py`` (the sampling loop):

- the bank is projected: every spatial C-vector of a bank latent divided by its L2 norm (``dim=1``);
- the kernel is ``exp(-||x0^ - b_n|| / (2 h^2))`` on the *unsquared* distance, the unsafe mean
  ``sum k_n b_n / (sum k_n + 1e-8)`` and the corrected prediction ``x0^ - scale * mean``;
- the gate opens while ``sum k_n + 1e-8 > threshold - margin``; the threshold is the minimum over
  the bank of that sum for the bank noised (``add_noise``, seed 42) at the last scheduler timestep;
- inside the window ``780 <= t <= 1000`` the loop takes x0^ from the DDPM step, corrects it and,
  where the gate is open, *replaces the sampler state* with ``add_noise(x0^', fresh noise, t)``;
  the DDPM step then runs from that state with the *old* noise prediction.

Everything is written in the k-diffusion form ``x = x0 + sigma * eps`` (a VP latent divided by
sqrt(alpha_bar)). There the state replacement is ``x <- x0^' + sigma * n`` and the old noise
prediction ``eps = (x_old - D) / sigma`` becomes the prediction ``D'' = x_new - sigma * eps`` the
step continues with. The same replacement is transplanted into the other samplers' loops (at the
first model evaluation of each step, as the official loop corrects once per step), so every
sampler family has its own reference. This file never goes into the extension: it imports nothing
from the WebUI and is not imported by ``lib_safe_denoiser``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Model = Callable[[torch.Tensor, float], torch.Tensor]
"""D(x, sigma): the model's denoised prediction in the k-diffusion form."""
Replace = Callable[[torch.Tensor, float, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(x, sigma, D) -> (x', D''): the reference's state replacement at a step's first evaluation."""

EPSILON = 1e-8
CALIBRATION_SEED = 42
WINDOW_T = (780, 1000)
"""The official nudity recipe's window in DDPM timesteps (negation_warmup_end, negation_warmup_start)."""
INFERENCE_STEPS = 50
STEPS_OFFSET = 1
"""Stable Diffusion's DDPMScheduler config: timesteps 981, 961, ..., 1 for 50 steps."""


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion 1.x's scaled-linear DDPM schedule (beta 0.00085 .. 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def ddpm_timesteps(steps: int = INFERENCE_STEPS, offset: int = STEPS_OFFSET) -> list[int]:
    """diffusers' DDPMScheduler.set_timesteps ("leading" spacing) with SD's steps_offset."""
    ratio = 1000 // steps
    return [i * ratio + offset for i in reversed(range(steps))]


def sigma_of(t: int, alphas_cumprod: torch.Tensor) -> float:
    a = float(alphas_cumprod[t])
    return math.sqrt((1 - a) / a)


def project(latents: torch.Tensor) -> torch.Tensor:
    """``RepellencyMethod.project``: each spatial vector over the channel axis (dim 1) divided by its
    L2 norm. (A zero vector stays zero here; the official code would divide by zero.)"""
    norm = latents.norm(dim=1, keepdim=True)
    return latents / norm.clamp_min(torch.finfo(latents.dtype).tiny)


@dataclass
class KernelFast:
    """``kernel_fast`` (RBFKernelRepellency) on a projected bank, one gate decision per sample."""

    bank: torch.Tensor  # [N, ...] projected bank latents
    bandwidth: float = 3.15
    scale: float = 0.33
    margin: float = 1.6
    threshold: float = -math.inf  # -inf: no gate

    def kernel(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unsafe mean [B, ...], denominator sum k + eps [B]) as ``empirical_denoiser`` computes them."""
        flat, ref = x.reshape(x.shape[0], -1).double(), self.bank.reshape(self.bank.shape[0], -1).double()
        k = torch.exp(-torch.cdist(flat, ref) / (2.0 * self.bandwidth**2))
        denominator = k.sum(dim=1) + EPSILON
        mean = (k @ ref) / denominator[:, None]
        return mean.reshape(x.shape).to(x.dtype), denominator

    def correct(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 - scale * mean, gate open per sample): ``conditioning_threshold``."""
        mean, denominator = self.kernel(x0)
        return x0 - self.scale * mean, denominator > self.threshold - self.margin

    def calibrate(self, alphas_cumprod: torch.Tensor, t_last: int = STEPS_OFFSET) -> float:
        """``set_noisy_proj_ref`` + ``empirical_beta`` (quantile 0) at the last timestep: the bank
        noised as VP latents ``sqrt(a) b + sqrt(1 - a) n`` with seed 42, its minimum kernel sum."""
        gen = torch.Generator().manual_seed(CALIBRATION_SEED)
        a = float(alphas_cumprod[t_last])
        noise = torch.randn(self.bank.shape, generator=gen, dtype=self.bank.dtype)
        noised = math.sqrt(a) * self.bank + math.sqrt(1 - a) * noise
        _, denominator = self.kernel(noised)
        self.threshold = float(denominator.min())
        return self.threshold


def state_replacement(repel: KernelFast, window: tuple[float, float], gen: torch.Generator) -> Replace:
    """The official correction as a sampler-state replacement inside the sigma ``window``."""
    lo, hi = window

    def replace(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not lo <= sigma <= hi:
            return x, denoised
        corrected, gate = repel.correct(denoised)
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        eps = (x - denoised) / sigma
        x_new = corrected + sigma * noise
        open_ = gate.reshape(-1, *([1] * (x.ndim - 1)))
        x_out = torch.where(open_, x_new, x)
        return x_out, torch.where(open_, x_new - sigma * eps, denoised)

    return replace


def _first(model: Model, replace: Replace | None, x: torch.Tensor, sigma: float):
    denoised = model(x, sigma)
    return (x, denoised) if replace is None else replace(x, sigma, denoised)


def _ancestral(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample(kind: str, model: Model, x: torch.Tensor, sigmas: list[float], gen: torch.Generator,
           replace: Replace | None = None) -> torch.Tensor:
    """k-diffusion's loops (Euler, Euler a, Heun, DPM++ 2M, DPM++ SDE), the WebUI's PLMS and UniPC in the
    k-diffusion form and diffusers' DDPM step, from ``x`` at ``sigmas[0]``; ``replace`` acts at each
    step's first model evaluation (UniPC: on each state it keeps). ``gen`` draws the samplers' own noise."""
    if kind == "unipc":
        return _unipc(model, x, sigmas, replace)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x, denoised = _first(model, replace, x, s)
        eps = (x - denoised) / s
        if kind in ("euler", "ddim"):
            x = x + (s_next - s) * eps
        elif kind == "euler_a":
            down, up = _ancestral(s, s_next)
            x = x + (down - s) * eps + up * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        elif kind == "heun":
            x_2 = x + (s_next - s) * eps
            x = x_2 if s_next == 0 else x + (s_next - s) * (eps + (x_2 - model(x_2, s_next)) / s_next) / 2
        elif kind == "dpmpp_2m":
            x = _dpmpp_2m(x, denoised, s, s_next, sigmas[i - 1] if history else None, history[-1:] or None)
            history.append(denoised)
        elif kind == "dpmpp_sde":
            x = _dpmpp_sde(model, x, denoised, s, s_next, gen)
        elif kind == "plms":
            x, eps_used = _plms(model, x, eps, s, s_next, history)
            history.append(eps_used)
        elif kind == "ddpm":
            x = _ddpm(x, denoised, s, s_next, gen)
        else:
            raise ValueError(f"unknown sampler {kind!r}")
    return x


def _dpmpp_2m(x, denoised, s, s_next, s_prev, old):
    t, t_next = -math.log(s), -math.log(s_next) if s_next > 0 else math.inf
    if s_next == 0:
        return denoised
    h = t_next - t
    if old is None:
        d = denoised
    else:
        r = (t - -math.log(s_prev)) / h
        d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old[0]
    return (s_next / s) * x - math.expm1(-h) * d


def _dpmpp_sde(model, x, denoised, s, s_next, gen, r: float = 0.5):
    if s_next == 0:
        return denoised
    t, t_next = -math.log(s), -math.log(s_next)
    h = t_next - t
    s_mid = math.exp(-(t + h * r))
    down, up = _ancestral(s, s_mid)
    x_2 = (down / s) * x - math.expm1(-(-math.log(down) - t)) * denoised
    x_2 = x_2 + up * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    denoised_2 = model(x_2, s_mid)
    down, up = _ancestral(s, s_next)
    d = (1 - 1 / (2 * r)) * denoised + (1 / (2 * r)) * denoised_2
    x = (down / s) * x - math.expm1(-(-math.log(down) - t)) * d
    return x + up * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def _plms(model, x, eps, s, s_next, history):
    """The WebUI's PLMS (sd_samplers_timesteps_impl.plms) with its DDIM step written as x + (s' - s) e."""
    if not history:
        x_2 = x + (s_next - s) * eps
        eps_next = (x_2 - model(x_2, s_next)) / s_next if s_next > 0 else eps
        e = (eps + eps_next) / 2
    elif len(history) == 1:
        e = (3 * eps - history[-1]) / 2
    elif len(history) == 2:
        e = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
    else:
        e = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
    return x + (s_next - s) * e, eps


def _ddpm(x, denoised, s, s_next, gen):
    """diffusers' DDPMScheduler.step (eps prediction, "fixed_small" variance, no clipping) in the k form:
    the posterior q(x_prev | x, x0) of the VP process between noise levels s and s_next."""
    if s_next == 0:
        return denoised
    a, a_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
    beta = 1 - a / a_next
    c0 = math.sqrt(a_next) * beta / (1 - a)
    ct = math.sqrt(1 - beta) * (1 - a_next) / (1 - a)
    var = (1 - a_next) / (1 - a) * beta
    vp = c0 * denoised + ct * math.sqrt(a) * x + math.sqrt(var) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return vp / math.sqrt(a_next)


def _unipc(model: Model, x: torch.Tensor, sigmas: list[float], replace: Replace | None, order: int = 3,
           variant: str = "bh1", lower_order_final: bool = True) -> torch.Tensor:
    """The WebUI's UniPC (modules/models/diffusion/uni_pc/uni_pc.py, as sd_samplers_timesteps_impl.unipc
    runs it: multistep, data prediction, its default order 3, bh1 and lower order final) in the
    k-diffusion form (x / alpha, lambda = -log sigma) over the positive ``sigmas`` (the WebUI's settings
    ``uni_pc_order``, ``uni_pc_variant`` bh1/bh2 and ``uni_pc_lower_order_final`` as arguments). Each step predicts,
    calls the model there, and corrects its state with that prediction; the next step starts from the
    corrected state and treats the prediction as its own. So the official replacement acts on the state
    UniPC keeps (the start, then each corrected state) with the prediction it keeps, as on other samplers
    on the state the model sees."""
    levels = [s for s in sigmas if s > 0]
    steps = len(levels) - 1
    x, m = _first(model, replace, x, levels[0])
    models, lambdas = [m], [-math.log(levels[0])]
    for step in range(1, steps + 1):
        step_order = min(order, step)  # lower orders to start
        if lower_order_final:
            step_order = min(step_order, steps + 1 - step)
        x, m = _unipc_update(model, x, models, lambdas, levels[step], step_order, step < steps, variant)
        if m is not None and replace is not None:
            x, m = replace(x, levels[step], m)
        models, lambdas = (models + [m])[-order:], (lambdas + [-math.log(levels[step])])[-order:]
    return x


def _unipc_update(model: Model, x: torch.Tensor, models: list[torch.Tensor], lambdas: list[float], s_t: float,
                  order: int, corrector: bool, variant: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """multistep_uni_pc_bh_update with predict_x0, divided by alpha_t (so sigma_t / sigma_prev * x becomes
    exp(-h) * x and alpha_t * B(h) becomes B(h))."""
    m0, lambda_0 = models[-1], lambdas[-1]
    h = -math.log(s_t) - lambda_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (lambdas[-(i + 1)] - lambda_0) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x_base = math.exp(-h) * x - h_phi_1 * m0
    x_t = x_base
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]).tolist()
        x_t = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s, strict=True))
    if not corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(r_mat, b_vec).tolist()
    m_t = model(x_t, s_t)
    corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0.0
    return x_base - b_h * (corr + rhos_c[-1] * (m_t - m0)), m_t
