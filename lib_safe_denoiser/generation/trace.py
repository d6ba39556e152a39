"""A per-generation record of what the correction did, for the infotext and the diagnostics plot."""

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
    step: int
    sigma: float
    acted: int
    rows: int
    max_beta: float
    nearest_distance: float  # smallest distance of any row to the bank (NaN outside the window)


@dataclass
class GenerationTrace:
    """Steps of one sampling pass (a hires-fix pass starts a new one)."""

    steps: list[StepRecord] = field(default_factory=list)
    nearest: Counter = field(default_factory=Counter)

    def record(self, step: int, diag: Diagnostics) -> None:
        """Keep a few numbers of a correct() call: cheap, the tensors are tiny and on the CPU."""
        in_window = diag.in_window
        dist = diag.nearest_distance[in_window, 0] if diag.nearest_distance.shape[1] else diag.sigma[:0]
        self.steps.append(StepRecord(
            step=step,
            sigma=float(diag.sigma.max()) if diag.sigma.numel() else math.nan,
            acted=int(diag.acted.sum()),
            rows=int(diag.acted.numel()),
            max_beta=float(diag.beta.max()) if diag.beta.numel() else 0.0,
            nearest_distance=float(dist.min()) if dist.numel() else math.nan,
        ))
        if diag.nearest_index.shape[1]:
            self.nearest.update(int(i) for i in diag.nearest_index[diag.acted, 0].tolist() if i >= 0)

    def summary(self) -> TraceSummary:
        return TraceSummary(
            acted_steps=sum(1 for s in self.steps if s.acted),
            total_steps=len(self.steps),
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
        steps = [s.step for s in self.steps]
        ax.plot(steps, [s.max_beta for s in self.steps], "o-", color="tab:red", label="beta (max over batch)")
        ax.set_xlabel("sampling step")
        ax.set_ylabel("beta")
        twin = ax.twinx()
        twin.plot(steps, [s.nearest_distance for s in self.steps], "s--", color="tab:blue",
                  label="distance to nearest bank latent")
        twin.set_ylabel("distance")
        acted = [s.step for s in self.steps if s.acted]
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
