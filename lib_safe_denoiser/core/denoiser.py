"""The safe denoiser: corrects a model's x0 prediction away from a negation bank.

Theorem (docs/method.md): with p_data = (1-z) p_safe + z p_unsafe,

    E_safe[x0|x_t] = E_data[x0|x_t] + beta*(x_t) (E_data[x0|x_t] - E_unsafe[x0|x_t]),

beta* the posterior odds of the unsafe part. The bank gives E_unsafe exactly as a kernel
posterior mean; the modes differ in how they estimate beta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lib_safe_denoiser.core.config import SafeDenoiserConfig
from lib_safe_denoiser.core.kernel import KernelStats, gaussian_logits, kernel_stats, laplace_logits

PAPER_EPS = 1e-8
"""The official recipe's denominator guard: E_u = sum k_n x_n / (sum k_n + 1e-8)."""

CALIBRATION_BATCH = 64
CALIBRATION_ROWS = 1024


@dataclass
class Diagnostics:
    """What the last ``correct`` call did, one entry per row (CPU tensors).

    beta is the multiplier applied, 0 where nothing acted: in the paper mode the scale s times the
    kernel's share sum k / (sum k + 1e-8), so a bank too far for its kernel reads as ~0, not s;
    log_odds the odds mode's estimate (NaN in the other modes); log_kernel_sum the log of the
    kernel sum over the bank (the paper mode's gate statistic; the log density of the noised
    bank up to a constant in the others). Nearest entries are measured from x_t (odds,
    constant) or from the prediction (paper); index -1 and NaN outside the window.
    """

    sigma: torch.Tensor
    in_window: torch.Tensor
    acted: torch.Tensor
    beta: torch.Tensor
    log_odds: torch.Tensor
    log_kernel_sum: torch.Tensor
    nearest_index: torch.Tensor
    nearest_distance: torch.Tensor

    @classmethod
    def empty(cls, sigma: torch.Tensor, k: int) -> Diagnostics:
        b = sigma.shape[0]
        nan = torch.full((b,), math.nan, dtype=torch.float64)
        return cls(
            sigma=sigma.to(torch.float64),
            in_window=torch.zeros(b, dtype=torch.bool),
            acted=torch.zeros(b, dtype=torch.bool),
            beta=torch.zeros(b, dtype=torch.float64),
            log_odds=nan.clone(),
            log_kernel_sum=nan.clone(),
            nearest_index=torch.full((b, k), -1, dtype=torch.long),
            nearest_distance=torch.full((b, k), math.nan, dtype=torch.float64),
        )


def project_channels(latents: torch.Tensor) -> torch.Tensor:
    """The official recipe's bank projection (``RepellencyMethod.project``): each latent's vector over
    the channel axis (dim 1) at every position divided by its L2 norm, so the paper kernel's bandwidth
    and gate are numbers in that geometry. A zero vector stays zero (the official code divides by 0)."""
    return latents / latents.norm(dim=1, keepdim=True).clamp_min(torch.finfo(latents.dtype).tiny)


def _check_set(name: str, data: torch.Tensor) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    if data.ndim < 2:
        raise ValueError(f"{name} must have shape [N, ...] with at least one feature dimension, "
                         f"got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one latent")
    if not data.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {data.dtype}")
    if not bool(torch.isfinite(data).all()):
        bad = int((~torch.isfinite(data.reshape(data.shape[0], -1))).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or inf values in {bad} of its {data.shape[0]} latents")
    dtype = torch.float64 if data.dtype == torch.float64 else torch.float32
    return data.detach().reshape(data.shape[0], -1).to(dtype)


class _DeviceSet:
    """A flattened set with its squared norms, kept per device so the bank moves once."""

    def __init__(self, flat: torch.Tensor) -> None:
        self._by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._flat = flat
        self.size = flat.shape[0]
        self.dtype = flat.dtype

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._by_device:
            flat = self._flat.to(device)
            self._by_device[device] = (flat, (flat * flat).sum(dim=1))
        return self._by_device[device]


class SafeDenoiser:
    """Training-free safe denoiser over a negation bank (see docs/method.md).

    ``negation`` is a tensor [N, ...] of bank latents; ``reference`` an optional [M, ...] tensor
    of generic safe latents (or of the model's own samples with ``reference_kind="data"``),
    required by the odds mode. Both are validated here, so a bad bank fails at construction,
    never in the middle of sampling.
    """

    def __init__(self, negation: torch.Tensor, reference: torch.Tensor | None = None,
                 config: SafeDenoiserConfig | None = None) -> None:
        self.config = config if config is not None else SafeDenoiserConfig()
        self.shape = tuple(negation.shape[1:]) if isinstance(negation, torch.Tensor) else ()
        flat = _check_set("negation bank", negation)
        if self.config.mode == "paper" and self.config.project_bank:
            flat = project_channels(negation.detach().to(flat.dtype)).reshape(flat.shape)
        self._negation = _DeviceSet(flat)
        self._reference: _DeviceSet | None = None
        if reference is not None:
            flat = _check_set("reference set", reference)
            if tuple(reference.shape[1:]) != self.shape:
                raise ValueError(f"reference set latents have shape {tuple(reference.shape[1:])}, "
                                 f"but the negation bank's are {self.shape}")
            self._reference = _DeviceSet(flat)
        if self.config.mode == "odds" and self._reference is None:
            raise ValueError("the odds mode needs a reference set (generic safe latents, or samples of the "
                             "model with reference_kind='data'); pass reference=... or use the paper mode")
        self.gate_threshold: float | None = None
        self.last_diagnostics: Diagnostics | None = None

    @property
    def paper_bandwidth(self) -> float:
        """The paper kernel's bandwidth for this bank's latent size: h * (D / reference_dim)^(1/4).

        The kernel is exp(-||x0 - b|| / (2 h^2)) and distances between latents grow as sqrt(D), so at
        a fixed h the weights fall towards the 1e-8 guard on larger latents (SDXL, hires). Scaling h^2
        by sqrt(D / reference_dim) keeps every weight what it is at the recipe's own latent size (a
        2x upsampled latent gets exactly the upsampled correction); at that size h is the recipe's.
        """
        cfg = self.config
        dim = math.prod(self.shape) if self.shape else 1
        return cfg.bandwidth * (dim / cfg.reference_dim) ** 0.25 if cfg.reference_dim else cfg.bandwidth

    @property
    def n_negation(self) -> int:
        return self._negation.size

    @property
    def n_reference(self) -> int:
        return 0 if self._reference is None else self._reference.size

    # ------------------------------------------------------------------ public API
    def correct(self, x_t: torch.Tensor, sigma: float | torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """Return the safe x0 prediction for ``denoised`` = D(x_t, sigma) (k-diffusion parametrisation).

        Rows whose sigma lies outside the window (or is <= 0) come back unchanged; the inputs
        are never modified; the result has the dtype and device of ``denoised``.
        """
        sigmas = self._check_inputs(x_t, sigma, denoised)
        diag = Diagnostics.empty(sigmas, self.config.n_nearest)
        cfg = self.config
        rows = torch.nonzero((sigmas > 0) & (sigmas >= cfg.sigma_min) & (sigmas <= cfg.sigma_max)).flatten()
        self.last_diagnostics = diag
        if rows.numel() == 0:
            return denoised
        diag.in_window[rows] = True

        dtype = self._negation.dtype
        device = denoised.device
        idx = rows.to(device)
        x = x_t.detach().index_select(0, idx).reshape(rows.numel(), -1).to(dtype)
        d = denoised.detach().index_select(0, idx).reshape(rows.numel(), -1).to(dtype)
        s = sigmas[rows].to(device=device, dtype=dtype)

        if cfg.mode == "paper":
            new, beta, log_odds, stats, acted = self._paper(d)
        else:
            new, beta, log_odds, stats, acted = self._kernel_mean_mode(x, d, s)

        diag.beta[rows] = torch.where(acted, beta, torch.zeros_like(beta)).double().cpu()
        diag.log_odds[rows] = log_odds.double().cpu()
        diag.log_kernel_sum[rows] = stats.lse.double().cpu()
        diag.nearest_index[rows, : stats.nearest_index.shape[1]] = stats.nearest_index.cpu()
        diag.nearest_distance[rows, : stats.nearest_sq_dist.shape[1]] = stats.nearest_sq_dist.sqrt().double().cpu()
        diag.acted[rows] = acted.cpu()
        if not bool(acted.any()):
            return denoised
        out = denoised.detach().clone(memory_format=torch.contiguous_format)
        out.view(out.shape[0], -1).index_copy_(0, idx[acted], new[acted].to(out.dtype))
        return out

    def calibrate_gate(self, sigma: float = 0.0, seed: int = 42, quantile: float = 0.0,
                       max_rows: int = CALIBRATION_ROWS) -> float:
        """Calibrate the paper mode's gate once per bank: the ``quantile`` (0 = minimum) over the bank
        latents, noised to ``sigma`` with a fixed seed, of their kernel sums against the bank.

        The official code uses the last (least noisy) step of the schedule; the gate then opens
        while the prediction's kernel sum exceeds ``threshold - gate_margin``. Banks larger than
        ``max_rows`` are calibrated on a fixed random subset of queries (against the whole bank),
        which keeps the one-off cost O(max_rows * N) instead of O(N^2).
        """
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
        bank, bank_sq = self._negation.on(torch.device("cpu"))
        gen = torch.Generator().manual_seed(seed)
        queries = bank
        if bank.shape[0] > max_rows:
            queries = bank[torch.randperm(bank.shape[0], generator=gen)[:max_rows]]
        sums = []
        for start in range(0, queries.shape[0], CALIBRATION_BATCH):
            part = queries[start:start + CALIBRATION_BATCH]
            noised = part + float(sigma) * torch.randn(part.shape, generator=gen, dtype=part.dtype)
            stats = kernel_stats(noised, bank, bank_sq, laplace_logits(self.paper_bandwidth),
                                 chunk_size=self.config.chunk_size, want_mean=False)
            sums.append(stats.lse.exp())
        self.gate_threshold = float(torch.quantile(torch.cat(sums).double(), quantile))
        return self.gate_threshold

    # ------------------------------------------------------------------ internals
    def _check_inputs(self, x_t: torch.Tensor, sigma: float | torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}, but the bank latents have shape {self.shape} "
                             f"(expected [B, {', '.join(map(str, self.shape))}])")
        if denoised.shape != x_t.shape:
            raise ValueError(f"denoised has shape {tuple(denoised.shape)}, but x_t has shape {tuple(x_t.shape)}")
        sig = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(x_t.shape[0])
        if sig.numel() != x_t.shape[0]:
            raise ValueError(f"sigma has {sig.numel()} values for a batch of {x_t.shape[0]} rows")
        return sig.nan_to_num(nan=0.0).clone()

    def _kernel_mean_mode(self, x: torch.Tensor, d: torch.Tensor, s: torch.Tensor):
        cfg = self.config
        bank, bank_sq = self._negation.on(x.device)
        # each image a Gaussian of width h, noised to s: kernel variance s^2 + h^2, and the posterior
        # mean of x0 shrinks the kernel mean towards x_t by h^2 / (s^2 + h^2) (Tweedie)
        variance = s * s + cfg.smoothing**2
        keep = (s * s / variance).unsqueeze(1)

        def posterior_mean(kernel_mean: torch.Tensor) -> torch.Tensor:
            return kernel_mean if cfg.smoothing == 0 else keep * kernel_mean + (1.0 - keep) * x

        logits = gaussian_logits(variance.sqrt())
        stats = kernel_stats(x, bank, bank_sq, logits, chunk_size=cfg.chunk_size, want_mean=True,
                             k_nearest=cfg.n_nearest)
        unsafe_mean = posterior_mean(stats.mean)
        if cfg.mode == "constant":
            beta = torch.full_like(s, cfg.strength)
            acted = beta >= max(cfg.min_beta, torch.finfo(beta.dtype).tiny)
            return d + beta.unsqueeze(1) * (d - unsafe_mean), beta, torch.full_like(s, math.nan), stats, acted

        ref, ref_sq = self._reference.on(x.device)  # type: ignore[union-attr]  # checked in __init__
        ref_stats = kernel_stats(x, ref, ref_sq, logits, chunk_size=cfg.chunk_size,
                                 want_mean=cfg.safe_mean == "reference")
        log_ratio = (stats.lse - math.log(bank.shape[0])) - (ref_stats.lse - math.log(ref.shape[0]))
        if cfg.reference_kind == "safe":
            log_odds = math.log(cfg.prior / (1.0 - cfg.prior)) + log_ratio
        else:  # pooled: pi = z p_u / p_data, kept below 1
            log_pi = (math.log(cfg.prior) + log_ratio).clamp(max=-1e-12)
            log_odds = log_pi - torch.log1p(-log_pi.exp())
        beta = cfg.strength * log_odds.clamp(max=math.log(cfg.cap)).exp()
        acted = beta >= max(cfg.min_beta, torch.finfo(beta.dtype).tiny)
        if cfg.safe_mean == "reference":
            # D + beta (D - E_u) == D + pi (E_safe - E_u) when D = (1 - pi) E_safe + pi E_u; the second
            # form stays bounded where pi -> 1 and the first amplifies any error in D - E_u by beta.
            pi = torch.sigmoid(log_odds).unsqueeze(1)
            new = d + cfg.strength * pi * (posterior_mean(ref_stats.mean) - unsafe_mean)
        else:
            new = d + beta.unsqueeze(1) * (d - unsafe_mean)
        return new, beta, log_odds, stats, acted

    def _paper(self, d: torch.Tensor):
        cfg = self.config
        if self.gate_threshold is None and math.isfinite(cfg.gate_margin):
            self.calibrate_gate()
        bank, bank_sq = self._negation.on(d.device)
        stats: KernelStats = kernel_stats(d, bank, bank_sq, laplace_logits(self.paper_bandwidth),
                                          chunk_size=cfg.chunk_size, want_mean=True, k_nearest=cfg.n_nearest)
        # sum k / (sum k + eps) without leaving log space: sigmoid(lse - log eps)
        shrink = torch.sigmoid(stats.lse - math.log(PAPER_EPS)).unsqueeze(1)
        new = d - cfg.scale * shrink * stats.mean
        # an infinite margin is "no gate": the recipes for people and artworks are always on
        bar = self.gate_threshold - cfg.gate_margin if math.isfinite(cfg.gate_margin) else -math.inf
        gate = stats.lse > math.log(bar) if bar > 0 else torch.ones_like(stats.lse, dtype=torch.bool)
        acted = gate & (cfg.scale >= cfg.min_beta)  # as the official loop: the gate alone decides (and re-noises)
        beta = cfg.scale * shrink.squeeze(1)
        return new, beta, torch.full_like(stats.lse, math.nan), stats, acted
