"""What ``BankStore.gc`` deletes, directory by directory, once it knows what the banks reference.

Two ages decide: ``cutoff`` (the caller's grace period) for files no bank references, and
``in_flight`` (never less than the store's minimum) for files of writes that may still be in
progress: temp files, a bank directory whose manifest is not written yet, carried latents of
an import not yet committed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lib_safe_denoiser.banks.files import TEMP_PREFIX, mtime
from lib_safe_denoiser.banks.manifest import MANIFEST_FILE, POOL_FILE_RE, BankInfo

CARRIED_LATENTS_DIR = "latents"
"""A latents-only bank's own latents: ``banks/<name>/latents/<content hash>/...``."""


def sweep_pool(directory: Path, used_shas: set[str], cutoff: float, in_flight: float) -> int:
    """Files named by an image hash no bank holds (older than ``cutoff``), and temp files."""
    if not directory.is_dir():
        return 0
    removed = 0
    for f in directory.iterdir():
        if f.name.startswith(TEMP_PREFIX):
            limit = in_flight
        elif (m := POOL_FILE_RE.match(f.name)) is not None and m.group(1) not in used_shas:
            limit = cutoff
        else:
            continue
        if mtime(f) < limit:
            removed += remove(f)
    return removed


def sweep_banks(banks_dir: Path, infos: dict[str, BankInfo], in_flight: float) -> int:
    """Bank directories without a manifest, temp files, latents a bank no longer carries."""
    if not banks_dir.is_dir():
        return 0
    removed = 0
    for d in banks_dir.iterdir():
        info = infos.get(d.name)
        if info is None:
            if not (d / MANIFEST_FILE).exists() and newest_mtime(d) < in_flight:
                removed += remove(d)
            continue
        removed += sum(remove(f) for f in d.glob(TEMP_PREFIX + "*") if mtime(f) < in_flight)
        carried = d / CARRIED_LATENTS_DIR
        for sub in carried.iterdir() if carried.is_dir() else ():
            if not info.has_images and sub.name == info.content_hash:
                removed += sum(remove(f) for f in sub.rglob(TEMP_PREFIX + "*") if mtime(f) < in_flight)
            elif newest_mtime(sub) < in_flight:
                removed += remove(sub)
    return removed


def newest_mtime(path: Path) -> float:
    """The latest mtime in a tree: a directory is as young as the last file written into it."""
    newest = mtime(path)
    if path.is_dir():
        for p in path.rglob("*"):
            newest = max(newest, mtime(p))
    return newest


def remove(path: Path) -> int:
    """Delete a file or a tree; 1 if it went, 0 if it could not (gone already, in use): sweeps go on."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return 0
    return 1
