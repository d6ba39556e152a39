"""A per-generation record of what the correction did, for the infotext and the diagnostics plot.

The WebUI calls the model more than once per sampling step on some samplers (Heun, DPM2 and
DPM++ SDE twice, PLMS and UniPC once more at the start, DPM adaptive as often as it needs), so
the record keeps one entry per model call and counts *sampling steps* from the WebUI's progress
counter (``state.sampling_step``), which a sampler advances through its step callback. k-diffusion
samplers call back after the first model call of a step, so the progress a call sees is that of
the step before; the step a call belongs to is the progress the *next* call of its pass sees, and
the last call of a pass belongs to the step after its own progress (the last step, on a finished
pass). A step counts as acted if any of its calls acted.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from lib_safe_denoiser.core.denoiser import Diagnostics
from lib_safe_denoiser.generation.infotext import TraceSummary


@dataclass(frozen=True)
class StepRecord:
    """One model call: ``call`` its index in the trace, ``pass_index`` its sampling pass (a hires pass
    is the second), ``tick`` the WebUI's progress counter when it started and ``total`` the pass's
    step count (None for callers without a progress counter: each call is then a step of its own)."""

    call: int
    sigma: float
    acted: int
    rows: int
    max_beta: float
    nearest_distance: float  # smallest distance of any row to the bank (NaN outside the window)
    pass_index: int = 0
    tick: int | None = None
    total: int | None = None


@dataclass
class GenerationTrace:
    """Steps of one sampling pass (a hires-fix pass starts a new one)."""

    steps: list[StepRecord] = field(default_factory=list)
    nearest: Counter = field(default_factory=Counter)
    passes: int = 0

    def begin_pass(self) -> None:
        """Calls recorded from now on belong to a new sampling pass (its progress restarts at 0)."""
        self.passes += 1

    def record(self, diag: Diagnostics, tick: int | None = None, total: int | None = None) -> None:
        """Keep a few numbers of a correct() call: cheap, the tensors are tiny and on the CPU.

        ``tick`` is the WebUI's progress counter when the call started, ``total`` the pass's steps."""
        in_window = diag.in_window
        dist = diag.nearest_distance[in_window, 0] if diag.nearest_distance.shape[1] else diag.sigma[:0]
        self.steps.append(StepRecord(
            call=len(self.steps),
            sigma=float(diag.sigma.max()) if diag.sigma.numel() else math.nan,
            acted=int(diag.acted.sum()),
            rows=int(diag.acted.numel()),
            max_beta=float(diag.beta.max()) if diag.beta.numel() else 0.0,
            nearest_distance=float(dist.min()) if dist.numel() else math.nan,
            pass_index=max(self.passes - 1, 0),
            tick=tick,
            total=total,
        ))
        if diag.nearest_index.shape[1]:
            self.nearest.update(int(i) for i in diag.nearest_index[diag.acted, 0].tolist() if i >= 0)

    def sampling_steps(self) -> list[int]:
        """The sampling step of each recorded call, in its pass (see the module docstring)."""
        out = []
        for i, rec in enumerate(self.steps):
            nxt = self.steps[i + 1] if i + 1 < len(self.steps) else None
            if rec.tick is None:
                out.append(rec.call)
            elif nxt is not None and nxt.pass_index == rec.pass_index and nxt.tick is not None:
                out.append(nxt.tick)
            elif rec.total is not None and rec.tick + 1 >= rec.total:
                out.append(rec.tick)  # the pass's last step (or past it: DPM adaptive takes more)
            else:
                out.append(rec.tick + 1)
        return out

    def step_positions(self) -> list[int]:
        """Each call's sampling step counted over the whole generation (a hires pass continues the count)."""
        keys = list(zip((s.pass_index for s in self.steps), self.sampling_steps(), strict=True))
        order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        return [order[k] for k in keys]

    def summary(self) -> TraceSummary:
        """Acted and total sampling steps over every pass; a step acted if any of its calls did."""
        keys = self.step_positions()
        return TraceSummary(
            acted_steps=len({k for k, s in zip(keys, self.steps, strict=True) if s.acted}),
            total_steps=len(set(keys)),
            max_beta=max((s.max_beta for s in self.steps), default=0.0),
        )

    def nearest_indices(self, k: int = 4) -> list[int]:
        """The bank entries most often nearest to the steered samples, most frequent first."""
        return [i for i, _ in self.nearest.most_common(k)]

    def plot_image(self, width: float = 6.0, height: float = 3.2) -> Image.Image:
        """beta and the distance to the bank per step, as a PNG-ready image."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, height), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        steps = self.step_positions()
        ax.plot(steps, [s.max_beta for s in self.steps], "o-", color="tab:red", label="beta (max over batch)")
        ax.set_xlabel("sampling step")
        ax.set_ylabel("beta")
        twin = ax.twinx()
        twin.plot(steps, [s.nearest_distance for s in self.steps], "s--", color="tab:blue",
                  label="distance to nearest bank latent")
        twin.set_ylabel("distance")
        acted = [step for step, rec in zip(steps, self.steps, strict=True) if rec.acted]
        if acted:
            ax.axvspan(min(acted) - 0.5, max(acted) + 0.5, color="tab:red", alpha=0.08)
        summary = self.summary()
        ax.set_title(f"acted on {summary.acted_steps}/{summary.total_steps} steps, max beta {summary.max_beta:.3g}")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        buf.seek(0)
        return Image.open(buf).convert("RGB")
