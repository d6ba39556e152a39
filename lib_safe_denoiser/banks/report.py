"""What a write that takes many images reports back: the images added, left out, and why.

A batch never fails as a whole because of some bad files: the good ones are saved and the report
names every file that was not, so the front-end (UI message, REST response, CLI output) can show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lib_safe_denoiser.banks.inputs import SkippedFile
from lib_safe_denoiser.banks.manifest import BankInfo
from lib_safe_denoiser.errors import BankError

SUMMARY_MAX_ITEMS = 5
"""How many skipped files or near-duplicate pairs ``AddReport.summary`` names before "and N more"."""


@dataclass(frozen=True)
class AddReport:
    """The outcome of creating or appending to a bank: what went in, what did not, and why."""

    info: BankInfo
    added: tuple[str, ...]
    """Source names of the images added."""
    duplicates: tuple[str, ...]
    """Source names left out because the same bytes are in the input already or in the bank."""
    skipped: tuple[SkippedFile, ...]
    """Inputs that could not be used, each with the reason."""
    near_duplicates: tuple[tuple[str, str], ...]
    """(new source, earlier source) pairs that look the same (perceptual hash); both were kept."""

    def summary(self) -> str:
        """One sentence for a person: counts first, then the names that need attention."""
        n = len(self.added)
        parts = [f"Added {n} image{_s(n)} to {self.info.name!r} (now {self.info.n_images})"]
        if self.duplicates:
            k = len(self.duplicates)
            parts.append(f"{k} duplicate{_s(k)} left out")
        if self.near_duplicates:
            k = len(self.near_duplicates)
            shown = [f"{a} ~ {b}" for a, b in self.near_duplicates]
            parts.append(f"{k} near-duplicate{_s(k)} kept: {_first(shown)}")
        if self.skipped:
            k = len(self.skipped)
            parts.append(f"skipped {k}: {_first([f'{s.name} ({s.reason})' for s in self.skipped])}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "info": self.info.as_dict(),
            "added": list(self.added),
            "duplicates": list(self.duplicates),
            "skipped": [s.as_dict() for s in self.skipped],
            "near_duplicates": [list(p) for p in self.near_duplicates],
            "summary": self.summary(),
        }


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SUMMARY_MAX_ITEMS])
    more = len(items) - SUMMARY_MAX_ITEMS
    return f"{shown} and {more} more" if more > 0 else shown


def nothing_usable(skipped: Sequence[SkippedFile]) -> BankError:
    """The error when no given file can be used: then nothing is written, and each file is named."""
    if not skipped:
        return BankError("no images given; a bank needs at least one image")
    listed = "; ".join(f"{s.name}: {s.reason}" for s in skipped)
    return BankError(f"none of the {len(skipped)} given file(s) can be used, nothing was saved: {listed}")
