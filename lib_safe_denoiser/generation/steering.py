"""One sampling pass's steering: what the WebUI's three CFG callbacks hand over, turned into corrections.

The glue calls ``capture`` from ``on_cfg_denoiser`` (the model inputs), ``steer_outputs_`` from
``on_cfg_denoised`` (the raw per-row outputs, edited in place so that the live preview and an
interrupted result are steered too) and ``steer_combined`` from ``on_cfg_after_cfg``. The last
only acts for a step whose outputs were not steered — WebUI forks that never fire
``on_cfg_denoised`` — so a step is never corrected twice. Pure torch: no WebUI imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib_safe_denoiser.concepts.steering import ConceptSteering
from lib_safe_denoiser.core.carry import UNIPC_DEFAULTS, Carry
from lib_safe_denoiser.core.denoiser import SafeDenoiser
from lib_safe_denoiser.generation.cfg_rows import CondsList, correction_delta, steer_rows_
from lib_safe_denoiser.generation.trace import GenerationTrace


@dataclass
class _Captured:
    x_in: torch.Tensor
    sigma_in: torch.Tensor
    tick: int | None
    total: int | None
    second: bool
    steered: bool = False


class Steering:
    """Corrections of one pass with one SafeDenoiser; every correct() call lands in ``trace``."""

    def __init__(self, safe: SafeDenoiser | None, trace: GenerationTrace,
                 concepts: ConceptSteering | None = None) -> None:
        self.safe = safe
        self.concepts = concepts
        self.trace = trace
        self._captured: _Captured | None = None
        self.carry: Carry | None = None
        self.sampler_set = False
        trace.begin_pass()

    def set_sampler(self, carry_kind: str | None, eta: float, seed: int,
                    unipc: tuple[int, str, bool] = UNIPC_DEFAULTS) -> None:
        """Tell the pass which sampler runs it (once, at its first model call): where the paper mode
        carries its correction (``config.carry``) and the carry supports the sampler (``carry_kind``
        one of core.carry.CARRY_KINDS, None where it does not), the correction is carried into the
        state, with the sampler's ancestral ``eta``, re-noising noise drawn from ``seed`` and, for
        UniPC, its (order, variant, lower order final)."""
        self.sampler_set = True
        if self.safe is None:
            return
        cfg = self.safe.config
        if cfg.mode == "paper" and cfg.carry and carry_kind is not None:
            self.carry = Carry(carry_kind, eta, torch.Generator().manual_seed(seed), unipc=unipc)

    def capture(self, x_in: torch.Tensor, sigma_in: torch.Tensor, tick: int | None = None,
                total: int | None = None, second: bool = False) -> None:
        """Keep the model inputs of this call ([cond rows..., one uncond row per image]).

        ``tick`` and ``total`` are the WebUI's progress counter and the pass's step count
        (``params.sampling_step``, ``params.total_sampling_steps``): the trace counts sampling steps
        with them; without them each model call counts as a step. ``second``: the call is the second of
        its step (Heun), which completes the first call's carry.
        """
        if x_in.ndim < 2 or sigma_in.ndim != 1 or sigma_in.shape[0] != x_in.shape[0]:
            raise ValueError(f"model inputs of shape {tuple(x_in.shape)} with sigma of shape {tuple(sigma_in.shape)}")
        self._captured = _Captured(x_in, sigma_in, tick, total, second)

    def steer_outputs_(self, x_out: torch.Tensor, conds_list: CondsList, cond_scale: float,
                       alphas_cumprod: torch.Tensor | None = None) -> None:
        """Correct the step's combined prediction by editing every output row in place.

        ``alphas_cumprod`` is given for timestep samplers (eps outputs, DDPM timesteps).
        """
        cap = self._require()
        if x_out.shape[0] != cap.x_in.shape[0]:
            raise ValueError(f"the model returned {x_out.shape[0]} rows for {cap.x_in.shape[0]} inputs")
        steer_rows_(x_out, cap.x_in, cap.sigma_in, conds_list, cond_scale, self._correct,
                    alphas_cumprod=alphas_cumprod)
        cap.steered = True

    def steer_combined(self, combined: torch.Tensor, alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
        """The combined prediction [B, ...] corrected, unless this step's outputs already were."""
        cap = self._captured
        if cap is None or cap.steered:
            self._captured = None
            return combined
        n = combined.shape[0]
        delta = correction_delta(combined, cap.x_in[-n:], cap.sigma_in[-n:], self._correct,
                                 alphas_cumprod=alphas_cumprod)
        self._captured = None
        return combined if delta is None else combined + delta.to(combined.dtype)

    @property
    def sigma0(self) -> float:
        """The captured step's noise level, read from its last row (every image of a step shares it;
        a DDPM timestep for timestep samplers)."""
        return float(self._require().sigma_in[-1])

    def _require(self) -> _Captured:
        if self._captured is None:
            raise RuntimeError("the model outputs arrived without their inputs (on_cfg_denoiser did not run)")
        return self._captured

    def _correct(self, x_t: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """The bank correction (if any), then the concept steering (if any) on its result."""
        out = self._correct_bank(x_t, sigma, denoised) if self.safe is not None else denoised
        return self.concepts.correct(x_t, sigma, out) if self.concepts is not None else out

    def _correct_bank(self, x_t: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        out = self.safe.correct(x_t, sigma, denoised)
        cap = self._require()
        diag = self.safe.last_diagnostics
        self.trace.record(diag, cap.tick, cap.total)
        if self.carry is None:
            return out
        flat = denoised.reshape(denoised.shape[0], -1)
        if cap.second:
            carried = self.carry.second(flat)
        else:
            steps_left = cap.total - cap.tick if cap.total is not None and cap.tick is not None else 1
            carried = self.carry.first(x_t.reshape(flat.shape), float(sigma[-1]), flat,
                                       flat if out is denoised else out.reshape(flat.shape),
                                       diag.acted.to(flat.device), steps_left)
        return denoised if carried is flat else carried.reshape(denoised.shape)
