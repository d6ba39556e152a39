"""Latent files of banks: the shared, size-limited cache and the latents a latents-only bank carries.

Both use one layout under their base directory::

    <content_hash>/<vae dir>/<h>x<w>.<resize>.safetensors     latents [N, C, h, w] float32

A latent is valid only for the images, the VAE, the resize policy and the latent size that made it,
hence the key. Rows are in sorted-sha256 order, so banks with equal content (a renamed bank, two
banks built from the same files in another order) share one file; the store permutes rows back to
the bank's order. The metadata repeats the key, so a file moved or damaged is noticed, not used.

The cache under ``<root>/cache`` is disposable: with a size limit, the least recently used files go
first (a hit touches the file's mtime), across all banks, never the file just written. The latents a
latents-only bank carries (``banks/<name>/latents``) are that bank's only data and are never evicted.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from lib_safe_denoiser.banks.files import atomic_write_bytes, mtime, safe_component
from lib_safe_denoiser.errors import BankError

logger = logging.getLogger(__name__)

CACHE_ORDER = "sha256-sorted"
LATENTS_TENSOR = "latents"
LATENT_SUFFIX = ".safetensors"
LATENT_FILE_RE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})\.([a-z]{1,16})\.safetensors$")


@dataclass(frozen=True)
class LatentKey:
    content_hash: str
    vae_id: str
    resize: str
    latent_hw: tuple[int, int]

    def relpath(self) -> Path:
        h, w = self.latent_hw
        return Path(self.content_hash) / vae_dir(self.vae_id) / f"{h}x{w}.{self.resize}{LATENT_SUFFIX}"

    def metadata(self, n: int) -> dict[str, str]:
        h, w = self.latent_hw
        return {
            "content_hash": self.content_hash,
            "vae_id": self.vae_id,
            "resize": self.resize,
            "n": str(n),
            "latent_hw": f"{h}x{w}",
            "order": CACHE_ORDER,
        }


@dataclass(frozen=True)
class CacheEntry:
    """One latent file of a bank, as ``BankStore.cache_status`` reports it."""

    vae_id: str
    latent_hw: tuple[int, int]
    resize: str
    bytes: int
    last_used: str
    carried: bool = False
    """True for latents a latents-only bank carries: its own data, never evicted or dropped."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "vae_id": self.vae_id,
            "latent_hw": list(self.latent_hw),
            "resize": self.resize,
            "bytes": self.bytes,
            "last_used": self.last_used,
            "carried": self.carried,
        }


def vae_dir(vae_id: str) -> str:
    if not isinstance(vae_id, str) or not vae_id.strip():
        raise BankError("vae_id must be a non-empty text naming the VAE (e.g. its file name or hash)")
    return safe_component(vae_id)


def check_latent_hw(latent_hw: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (operator.index(v) for v in latent_hw)  # accepts numpy ints, refuses floats
    except (TypeError, ValueError) as e:
        raise BankError(f"latent_hw must be two integers (height, width), got {latent_hw!r}") from e
    if h < 1 or w < 1:
        raise BankError(f"latent_hw must be positive, got {latent_hw!r}")
    return h, w


def latents_bytes(key: LatentKey, latents: torch.Tensor) -> bytes:
    """A latent file's bytes: the tensor (rows in sorted-sha256 order) and the key as metadata."""
    return safetensors_save({LATENTS_TENSOR: latents.contiguous()}, metadata=key.metadata(latents.shape[0]))


def check_latent_file(path: Path, key: LatentKey, n: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The latents in ``path`` if they are sound and belong to ``key`` with ``n`` rows; ``BankError`` if not
    (``FileNotFoundError`` if there is no file).

    ``rows`` picks the order of the result (the store's permutation to a bank's order), taken
    straight from the memory-mapped file: one copy, never a view of the file (which Windows would
    keep from being replaced). Finiteness is checked on a float32 sum first (NaN and inf survive
    a sum); only a non-finite sum pays for the element-wise check, which decides.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            mapped = f.get_tensor(LATENTS_TENSOR)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own types for truncated or garbage files
        raise BankError(f"not a readable latent file ({e})") from e
    expected = key.metadata(n)
    wrong = [k for k in ("content_hash", "vae_id", "resize", "order") if meta.get(k) != expected[k]]
    if wrong:
        raise BankError(f"its metadata ({', '.join(wrong)}) belongs to other latents")
    h, w = key.latent_hw
    if mapped.ndim != 4 or mapped.shape[0] != n or tuple(mapped.shape[2:]) != (h, w) or mapped.shape[1] < 1:
        raise BankError(f"it holds latents of shape {list(mapped.shape)}, expected [{n}, C, {h}, {w}]")
    if mapped.dtype != torch.float32:
        raise BankError(f"it holds {mapped.dtype} latents, expected float32")
    latents = mapped.clone() if rows is None else mapped.index_select(0, rows)
    if not torch.isfinite(latents.sum()) and not torch.isfinite(latents).all():
        raise BankError("it holds NaN or infinite values")
    return latents


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


class LatentDir:
    """Latent files under one base directory (see the module doc for the layout)."""

    def __init__(self, base: Path, *, carried: bool = False) -> None:
        self.base = base
        self.carried = carried

    def path(self, key: LatentKey) -> Path:
        return self.base / key.relpath()

    def load(self, key: LatentKey, n: int, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The latents for ``key`` (rows in the order ``rows`` gives, default as stored), None if there
        is no file; ``BankError`` if the file is damaged."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return check_latent_file(path, key, n, rows)
        except FileNotFoundError:  # removed meanwhile (another process evicted it)
            return None

    def write(self, key: LatentKey, latents: torch.Tensor) -> Path:
        path = self.path(key)
        atomic_write_bytes(path, latents_bytes(key, latents))
        return path

    def files(self, content_hash: str | None = None) -> Iterator[Path]:
        """Latent files (by name pattern) of one content hash, or of all."""
        base = self.base / content_hash if content_hash else self.base
        if not base.is_dir():
            return
        pattern = f"*/*{LATENT_SUFFIX}" if content_hash else f"*/*/*{LATENT_SUFFIX}"
        for f in base.glob(pattern):
            if LATENT_FILE_RE.match(f.name) and f.is_file():
                yield f

    def entries(self, content_hash: str) -> list[tuple[Path, CacheEntry]]:
        """The latent files of ``content_hash`` with their key, read from each file's header."""
        found = []
        for f in self.files(content_hash):
            m = LATENT_FILE_RE.match(f.name)
            assert m is not None
            vae_id = f.parent.name
            with contextlib.suppress(Exception), safe_open(str(f), framework="pt", device="cpu") as sf:
                vae_id = (sf.metadata() or {}).get("vae_id", vae_id)  # unreadable header: still listed
            try:
                st = f.stat()
            except OSError:  # evicted by another process meanwhile
                continue
            entry = CacheEntry(
                vae_id=vae_id,
                latent_hw=(int(m.group(1)), int(m.group(2))),
                resize=m.group(3),
                bytes=st.st_size,
                last_used=_iso(st.st_mtime),
                carried=self.carried,
            )
            found.append((f, entry))
        return sorted(found, key=lambda pe: (pe[1].vae_id, pe[1].latent_hw, pe[1].resize))


class LatentCache(LatentDir):
    """The shared cache, with least-recently-used eviction above ``limit_bytes`` (None: no limit)."""

    def __init__(self, base: Path, limit_bytes: int | None, lock: Callable[[], contextlib.AbstractContextManager]):
        super().__init__(base)
        self.limit_bytes = limit_bytes
        self._lock = lock

    @property
    def limit_bytes(self) -> int | None:
        return self._limit_bytes

    @limit_bytes.setter
    def limit_bytes(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise BankError(f"cache_limit_bytes must be a non-negative integer or None, got {value!r}")
        self._limit_bytes = value

    def load(self, key: LatentKey, n: int, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The cached latents or None; a damaged or foreign file is logged and treated as absent."""
        try:
            latents = super().load(key, n, rows)
        except BankError as e:
            logger.warning("safe denoiser: latent cache %s is unusable (%s); encoding again", self.path(key), e)
            return None
        if latents is not None:
            with contextlib.suppress(OSError):
                os.utime(self.path(key))  # "recently used", for the eviction order
        return latents

    def write(self, key: LatentKey, latents: torch.Tensor) -> Path:
        path = super().write(key, latents)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used files until the cache fits its limit; returns how many went."""
        if self.limit_bytes is None or not self.base.is_dir():
            return 0
        removed = 0
        with self._lock():
            files = []
            for f in self.files():
                try:
                    st = f.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, f))
            total = sum(size for _, size, _ in files)
            for _, size, f in sorted(files, key=lambda t: t[0]):
                if total <= self.limit_bytes:
                    break
                if keep is not None and f == keep:
                    continue
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:  # e.g. open by a reader on Windows: try the next one
                    logger.warning("safe denoiser: cannot evict latent cache %s: %s", f, e)
                    continue
                total -= size
                removed += 1
                _remove_empty_parents(f.parent, self.base)
        if removed:
            logger.info("safe denoiser: latent cache over its limit; evicted %d least recently used files", removed)
        return removed

    def drop(self, content_hash: str, *, vae_id: str | None = None, latent_hw: tuple[int, int] | None = None) -> int:
        """Delete cache files of ``content_hash`` (only those of ``vae_id`` / ``latent_hw`` if given)."""
        want_dir = vae_dir(vae_id) if vae_id is not None else None
        hw = check_latent_hw(latent_hw) if latent_hw is not None else None
        removed = 0
        for f in list(self.files(content_hash)):
            m = LATENT_FILE_RE.match(f.name)
            assert m is not None
            if want_dir is not None and f.parent.name != want_dir:
                continue
            if hw is not None and (int(m.group(1)), int(m.group(2))) != hw:
                continue
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed += 1
            _remove_empty_parents(f.parent, self.base)
        return removed

    def sweep(self, used_hashes: set[str], cutoff: float) -> int:
        """Delete cache directories of content no bank has, and stray files older than ``cutoff``."""
        if not self.base.is_dir():
            return 0
        removed = 0
        for d in self.base.iterdir():
            if d.is_dir() and d.name not in used_hashes:
                removed += sum(1 for _ in self.files(d.name))
                shutil.rmtree(d, ignore_errors=True)
            elif d.is_dir():
                for f in d.rglob("*"):  # temp files of interrupted writes, files of an older layout
                    if f.is_file() and not LATENT_FILE_RE.match(f.name) and mtime(f) < cutoff:
                        with contextlib.suppress(OSError):
                            f.unlink()
                            removed += 1
            elif mtime(d) < cutoff:
                with contextlib.suppress(OSError):
                    d.unlink()
                    removed += 1
        return removed


def _remove_empty_parents(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty (or gone): stop climbing
            return
        directory = directory.parent
