"""Negation banks on disk: named, content-addressed sets of images plus their latent caches.

Layout under the store root (``<webui data dir>/safe_denoiser``)::

    banks/<name>/manifest.json      name, description, created, updated, content_hash,
                                    images: [{"sha256", "file", "source_name"}] in the bank's order
    images/<sha256>.<ext>           the original image bytes, stored once however many banks use them
    cache/<content_hash>/<vae>/<h>x<w>.safetensors
                                    latents [N, C, h, w] float32, rows in sorted-sha256 order

Why this shape:
- Images are kept as given (not re-encoded), so their hash is the hash of the file a user can
  check with ``sha256sum``. The pool is shared so that two banks built from overlapping folders
  cost the disk once; ``gc`` removes pool files no bank references any more.
- ``content_hash`` is the sha256 of the sorted image hashes: the same images give the same hash in
  any order, which is what the latent cache and the infotext need (a bank renamed or rebuilt from
  the same files keeps its cache and its identity).
- A latent is only valid for the VAE and the latent size that made it, hence the cache key; rows
  are stored in sorted-hash order so banks with equal content share one cache file, and
  ``latents`` returns them permuted back to the bank's own order.
- The manifest is written last and atomically: it is the commit point. Anything written before it
  (pool images) is harmless if the operation fails; the previous manifest stays intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import operator
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE, check_latents, encode_images
from lib_safe_denoiser.banks.files import (
    TEMP_PREFIX,
    atomic_copy,
    atomic_write_bytes,
    safe_component,
    sha256_file,
)
from lib_safe_denoiser.banks.inputs import (
    IMAGE_EXTENSIONS,
    MAX_DESCRIPTION_LEN,
    ImageInput,
    StagedImage,
    clean_text,
    find_images,
    stage_all,
    validate_bank_name,
)
from lib_safe_denoiser.errors import BankError, BankNotFoundError

__all__ = [
    "IMAGE_EXTENSIONS",
    "BankInfo",
    "BankStore",
    "content_hash_of",
    "find_images",
    "validate_bank_name",
]

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
CACHE_ORDER = "sha256-sorted"
GC_GRACE_S = 600.0
"""Pool files younger than this survive ``gc``: another process may be about to commit them."""

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_POOL_FILE_RE = re.compile(r"^([0-9a-f]{64})\.([a-z0-9]{1,5})$")
_CACHE_FILE_RE = re.compile(r"^([0-9]+)x([0-9]+)\.safetensors$")
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class BankInfo:
    """What a front-end needs to show or record about a bank."""

    name: str
    content_hash: str
    n_images: int
    created: str
    description: str = ""
    updated: str = ""

    @property
    def short_hash(self) -> str:
        """First 10 hex chars: enough to tell banks apart in infotext, short enough to read."""
        return self.content_hash[:10]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (REST responses, ``bank list --json``)."""
        return {**dataclasses.asdict(self), "short_hash": self.short_hash}


@dataclass(frozen=True)
class _ImageEntry:
    sha256: str
    file: str
    source_name: str


def content_hash_of(image_hashes: Iterable[str]) -> str:
    """sha256 over the sorted, de-duplicated image hashes, one per line: order-independent."""
    joined = "\n".join(sorted(set(image_hashes)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class BankStore:
    """All banks under one root directory. Thread-safe within a process (one lock per root).

    Nothing is created on disk until the first write, so pointing a store at a data directory
    is free. Methods raise ``BankError`` (``BankNotFoundError`` for unknown names) with messages
    meant for end users.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        key = str(self.root.resolve())
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(key, threading.RLock())

    # ---- paths -------------------------------------------------------------------------------
    @property
    def banks_dir(self) -> Path:
        return self.root / "banks"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def _manifest_path(self, name: str) -> Path:
        return self.banks_dir / name / "manifest.json"

    # ---- reading -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of all banks (directories holding a manifest), sorted."""
        if not self.banks_dir.is_dir():
            return []
        found = []
        for d in self.banks_dir.iterdir():
            if d.name.startswith(".") or not (d / "manifest.json").is_file():
                continue
            try:
                found.append(validate_bank_name(d.name))
            except BankError:
                logger.warning("safe denoiser: ignoring bank directory with an invalid name: %s", d)
        return sorted(found)

    def list(self) -> list[BankInfo]:
        """Info of every readable bank; unreadable ones are logged and left out (see ``get``)."""
        infos = []
        for name in self.names():
            try:
                infos.append(self.get(name))
            except BankError as e:
                logger.warning("safe denoiser: %s", e)
        return infos

    def get(self, name: str) -> BankInfo:
        return self._read(name)[0]

    def exists(self, name: str) -> bool:
        return self._manifest_path(validate_bank_name(name)).is_file()

    def image_paths(self, name: str) -> list[Path]:
        """The bank's image files, in the bank's order; ``BankError`` if one has gone missing."""
        _, entries = self._read(name)
        paths = [self.images_dir / e.file for e in entries]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise BankError(
                f"bank {name!r} is damaged: {len(missing)} image file(s) are missing, e.g. {missing[0]}; "
                "re-create the bank from its source images"
            )
        return paths

    def image_entries(self, name: str) -> list[dict[str, str]]:
        """The manifest's image records (sha256, file, source_name), in the bank's order."""
        return [dataclasses.asdict(e) for e in self._read(name)[1]]

    def _read(self, name: str) -> tuple[BankInfo, list[_ImageEntry]]:
        name = validate_bank_name(name)
        path = self._manifest_path(name)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            known = ", ".join(repr(n) for n in self.names()) or "none"
            raise BankNotFoundError(f"no bank named {name!r} (existing banks: {known})") from None
        except OSError as e:
            raise BankError(f"cannot read bank {name!r}: {e}") from e
        try:
            return self._parse_manifest(name, json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BankError(
                f"bank {name!r} has a damaged manifest ({path}): {e}; delete the bank and create it again"
            ) from e

    @staticmethod
    def _parse_manifest(name: str, data: dict[str, Any]) -> tuple[BankInfo, list[_ImageEntry]]:
        entries = []
        for item in data["images"]:
            sha, file = str(item["sha256"]), str(item["file"])
            m = _POOL_FILE_RE.match(file)
            if not _SHA_RE.match(sha) or m is None or m.group(1) != sha:
                raise ValueError(f"bad image record {item!r}")
            entries.append(_ImageEntry(sha, file, str(item.get("source_name", file))))
        if not entries:
            raise ValueError("it lists no images")
        content_hash = content_hash_of(e.sha256 for e in entries)
        if data["content_hash"] != content_hash or len({e.sha256 for e in entries}) != len(entries):
            raise ValueError("its content hash does not match its images")
        info = BankInfo(
            name=name,
            content_hash=content_hash,
            n_images=len(entries),
            created=str(data.get("created", "")),
            description=str(data.get("description", "")),
            updated=str(data.get("updated", data.get("created", ""))),
        )
        return info, entries

    # ---- writing -----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        images: Iterable[ImageInput],
        *,
        description: str = "",
        overwrite: bool = False,
    ) -> BankInfo:
        """Create bank ``name`` from ``images`` (duplicates dropped, first occurrence kept).

        Every image is decoded before anything is written, so one bad file leaves the store as it
        was. With ``overwrite`` an existing bank of that name is replaced in one atomic step.
        """
        name = validate_bank_name(name)
        description = clean_text(description, MAX_DESCRIPTION_LEN, "description")
        self._check_free(name, overwrite)
        staged = stage_all(images)
        with self._lock:
            replaced = self._check_free(name, overwrite)
            self._store_images(staged)
            now = _now()
            info = self._write_manifest(name, description, now, now, [self._entry(s) for s in staged])
            if replaced:
                self._gc_quietly()
        logger.info("safe denoiser: bank %r saved: %d images, hash %s", name, info.n_images, info.short_hash)
        return info

    def add_folder(
        self,
        name: str,
        folder: str | os.PathLike,
        *,
        recursive: bool = False,
        overwrite: bool = False,
        description: str = "",
    ) -> BankInfo:
        """Create bank ``name`` from every image (png/jpg/jpeg/webp/bmp) in ``folder``.

        Files are taken in sorted path order, so the bank's order is reproducible; each image's
        ``source_name`` is its path relative to ``folder``.
        """
        files = find_images(folder, recursive=recursive)
        base = Path(folder)
        sources = [(f.relative_to(base).as_posix(), f) for f in files]
        return self.create(name, sources, description=description, overwrite=overwrite)

    def add_images(self, name: str, images: Iterable[ImageInput]) -> BankInfo:
        """Append ``images`` to the existing bank ``name``; images it already holds are skipped."""
        name = validate_bank_name(name)
        self._read(name)  # fail fast (BankNotFoundError) before decoding anything
        staged = stage_all(images)
        with self._lock:
            info, entries = self._read(name)
            have = {e.sha256 for e in entries}
            new = [s for s in staged if s.sha256 not in have]
            if not new:
                return info
            self._store_images(new)
            info = self._write_manifest(
                name, info.description, info.created, _now(), entries + [self._entry(s) for s in new]
            )
            self._gc_quietly()
        logger.info("safe denoiser: added %d images to bank %r (now %d)", len(new), name, info.n_images)
        return info

    def delete(self, name: str) -> None:
        """Remove bank ``name``; its images and caches go too unless another bank shares them."""
        name = validate_bank_name(name)
        with self._lock:
            path = self._manifest_path(name)
            if not path.is_file():
                self._read(name)  # raises BankNotFoundError with the list of known banks
            try:
                path.unlink()  # the commit point: without its manifest the bank is gone
            except OSError as e:
                raise BankError(f"cannot delete bank {name!r}: {e}") from e
            shutil.rmtree(path.parent, ignore_errors=True)
            self._gc_quietly()
        logger.info("safe denoiser: bank %r deleted", name)

    def gc(self, *, grace_s: float = GC_GRACE_S) -> int:
        """Delete pool images, latent caches and temp files that no bank references; returns the count.

        Runs only if every manifest is readable: a damaged manifest might reference files that would
        otherwise look orphaned. Pool files younger than ``grace_s`` are kept, because another
        process may have written them and not yet committed its manifest.
        """
        with self._lock:
            used_shas: set[str] = set()
            used_hashes: set[str] = set()
            for n in self.names():
                try:
                    info, entries = self._read(n)
                except BankError as e:
                    logger.warning("safe denoiser: clean-up skipped: %s", e)
                    return 0
                used_hashes.add(info.content_hash)
                used_shas.update(e.sha256 for e in entries)
            cutoff = time.time() - grace_s
            removed = 0
            if self.images_dir.is_dir():
                for f in self.images_dir.iterdir():
                    m = _POOL_FILE_RE.match(f.name)
                    orphan = (m is not None and m.group(1) not in used_shas) or f.name.startswith(TEMP_PREFIX)
                    if orphan and f.is_file() and _mtime(f) < cutoff:
                        with contextlib.suppress(OSError):
                            f.unlink()
                            removed += 1
            if self.cache_dir.is_dir():
                for d in self.cache_dir.iterdir():
                    if _SHA_RE.match(d.name) and d.name not in used_hashes and d.is_dir():
                        shutil.rmtree(d, ignore_errors=True)
                        removed += 1
            for base in (self.banks_dir, self.cache_dir):  # temp files of interrupted writes
                for f in base.rglob(TEMP_PREFIX + "*") if base.is_dir() else ():
                    if f.is_file() and _mtime(f) < cutoff:
                        with contextlib.suppress(OSError):
                            f.unlink()
                            removed += 1
            return removed

    def _gc_quietly(self) -> None:
        try:
            self.gc()
        except OSError as e:  # the operation itself succeeded; leftovers are swept next time
            logger.warning("safe denoiser: clean-up failed: %s", e)

    def _check_free(self, name: str, overwrite: bool) -> bool:
        """True if ``name`` exists and may be replaced; ``BankError`` if it may not."""
        for existing in self.names():
            if existing.casefold() == name.casefold() and existing != name:
                raise BankError(
                    f"a bank named {existing!r} already exists (names are case-insensitive); "
                    "pick another name"
                )
        if not self._manifest_path(name).is_file():
            return False
        if not overwrite:
            raise BankError(
                f"bank {name!r} already exists; pick another name, add images to it, or overwrite it "
                "(overwrite=True, --overwrite)"
            )
        return True

    def _store_images(self, staged: Iterable[StagedImage]) -> None:
        for s in staged:
            target = self.images_dir / f"{s.sha256}.{s.ext}"
            if target.is_file():
                try:
                    if sha256_file(target) == s.sha256:
                        os.utime(target)  # fresh mtime: keeps a concurrent gc's grace period honest
                        continue
                    logger.warning("safe denoiser: replacing damaged pool image %s", target)
                except OSError:
                    pass
            try:
                if s.data is not None:
                    atomic_write_bytes(target, s.data)
                else:
                    assert s.path is not None
                    atomic_copy(s.path, target, expected_sha256=s.sha256)
            except OSError as e:
                raise BankError(f"cannot store image {s.source_name} in {self.images_dir}: {e}") from e

    @staticmethod
    def _entry(s: StagedImage) -> _ImageEntry:
        return _ImageEntry(s.sha256, f"{s.sha256}.{s.ext}", s.source_name)

    def _write_manifest(
        self, name: str, description: str, created: str, updated: str, entries: list[_ImageEntry]
    ) -> BankInfo:
        content_hash = content_hash_of(e.sha256 for e in entries)
        manifest = {
            "version": MANIFEST_VERSION,
            "name": name,
            "description": description,
            "created": created,
            "updated": updated,
            "content_hash": content_hash,
            "images": [dataclasses.asdict(e) for e in entries],
        }
        data = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
        try:
            atomic_write_bytes(self._manifest_path(name), data)
        except OSError as e:
            raise BankError(f"cannot save bank {name!r}: {e}") from e
        return BankInfo(name, content_hash, len(entries), created, description, updated)

    # ---- latents -----------------------------------------------------------------------------
    def cache_path(self, info: BankInfo, vae_id: str, latent_hw: tuple[int, int]) -> Path:
        h, w = latent_hw
        return self.cache_dir / info.content_hash / _vae_dir(vae_id) / f"{h}x{w}.safetensors"

    def latents(
        self,
        name: str,
        *,
        encoder: Callable[[torch.Tensor], torch.Tensor],
        vae_id: str,
        latent_hw: tuple[int, int],
        batch_size: int = 4,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The bank's latents [N, C, h, w] (float32, CPU, bank order) for this VAE and latent size.

        Read from the disk cache when present and sound; otherwise every image is encoded with
        ``encoder`` (pixels [n, 3, 8h, 8w] in [0, 1] -> scaled latents [n, C, h, w]) and the cache
        written. A damaged or mismatching cache file is logged and rebuilt, never fatal. The store
        lock is not held while encoding, so the UI stays usable; concurrent encodes of the same
        key both succeed and the last atomic write wins.
        """
        h, w = _check_latent_hw(latent_hw)
        info, entries = self._read(name)
        path = self.cache_path(info, vae_id, (h, w))
        order = sorted(range(len(entries)), key=lambda i: entries[i].sha256)
        to_bank_order = torch.empty(len(order), dtype=torch.long)
        to_bank_order[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        if order == sorted(order):
            to_bank_order = None  # already in cache order: skip the copy (a big bank is GBs)

        cached = self._load_cache(path, info, (h, w))
        if cached is not None:
            return cached if to_bank_order is None else cached[to_bank_order]

        paths = self.image_paths(name)
        sorted_paths = [paths[i] for i in order]
        logger.info(
            "safe denoiser: encoding bank %r (%d images) for %s at %dx%d latents",
            info.name,
            info.n_images,
            vae_id,
            h,
            w,
        )
        pixel_hw = (h * LATENT_DOWNSCALE, w * LATENT_DOWNSCALE)
        latents = encode_images(sorted_paths, encoder, pixel_hw, batch_size=batch_size, progress=progress)
        latents = check_latents(latents, info.n_images, (h, w))
        metadata = {
            "content_hash": info.content_hash,
            "vae_id": vae_id,
            "n": str(info.n_images),
            "latent_hw": f"{h}x{w}",
            "order": CACHE_ORDER,
        }
        try:
            atomic_write_bytes(path, safetensors_save({"latents": latents}, metadata=metadata))
        except OSError as e:  # the latents are good; only the cache is lost
            logger.warning("safe denoiser: cannot write latent cache %s: %s", path, e)
        return latents if to_bank_order is None else latents[to_bank_order]

    def _load_cache(self, path: Path, info: BankInfo, latent_hw: tuple[int, int]) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor("latents")
            if meta.get("content_hash") != info.content_hash or meta.get("order") != CACHE_ORDER:
                raise BankError("it belongs to other images")
            return check_latents(tensor, info.n_images, latent_hw)
        except Exception as e:  # any damage (truncation, bad header, wrong shape) -> rebuild, never crash
            logger.warning("safe denoiser: latent cache %s is unusable (%s); encoding again", path, e)
            return None

    def has_latents(self, name: str, vae_id: str, latent_hw: tuple[int, int]) -> bool:
        """Whether a cache file exists for this key (not validated): lets a caller decide whether
        ``latents`` will need the VAE (and a progress display) before calling it."""
        return self.cache_path(self.get(name), vae_id, _check_latent_hw(latent_hw)).is_file()

    def cached_sizes(self, name: str) -> list[tuple[str, tuple[int, int]]]:
        """(vae_id, (h, w)) pairs with a cache file for this bank, sorted; files are not validated."""
        info = self.get(name)
        base = self.cache_dir / info.content_hash
        if not base.is_dir():
            return []
        found = []
        for vae_dir in base.iterdir():
            if not vae_dir.is_dir():
                continue
            for f in vae_dir.iterdir():
                m = _CACHE_FILE_RE.match(f.name)
                if m is None:
                    continue
                vae_id = vae_dir.name
                try:
                    with safe_open(str(f), framework="pt", device="cpu") as sf:
                        vae_id = (sf.metadata() or {}).get("vae_id", vae_id)
                except Exception:  # unreadable header: still listed; latents() will rebuild it
                    pass
                found.append((vae_id, (int(m.group(1)), int(m.group(2)))))
        return sorted(found)


def _vae_dir(vae_id: str) -> str:
    if not isinstance(vae_id, str) or not vae_id.strip():
        raise BankError("vae_id must be a non-empty text naming the VAE (e.g. its file name or hash)")
    return safe_component(vae_id)


def _check_latent_hw(latent_hw: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (operator.index(v) for v in latent_hw)  # accepts numpy ints, refuses floats
    except (TypeError, ValueError) as e:
        raise BankError(f"latent_hw must be two integers (height, width), got {latent_hw!r}") from e
    if h < 1 or w < 1:
        raise BankError(f"latent_hw must be positive, got {latent_hw!r}")
    return h, w


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")
