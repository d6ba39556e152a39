"""Negation banks on disk: named, content-addressed sets of images plus their latent caches.

Layout under the store root (``<webui data dir>/safe_denoiser``)::

    banks/<name>/manifest.json      the bank (see manifest.py): metadata and its images in order
    banks/<name>/latents/...        only in a latents-only bank: the latents it carries (latent_cache.py)
    images/<sha256>.<ext>           the original image bytes, stored once however many banks use them
    cache/<content_hash>/...        latent cache, shared by banks of equal content (latent_cache.py)
    thumbs/<sha256>.png             thumbnails, made on first request
    locks/*.lock                    cross-process locks (locks.py)
    .tmp-*                          writes in progress (an import's staging folder, temp files)

Why this shape:
- Images are kept as given (not re-encoded), so their hash is the hash of the file a user can
  check with ``sha256sum``. The pool is shared so that two banks built from overlapping folders
  cost the disk once; ``gc`` removes pool files no bank references any more.
- ``content_hash`` is the sha256 of the sorted image hashes: the same images give the same hash in
  any order, so a bank renamed, rebuilt from the same files, or imported keeps its cache and its
  identity in the infotext.
- The manifest is written last and atomically: it is the commit point. Anything written before it
  (pool images, latent files) is invisible until then and swept by ``gc`` if the writer died, so a
  crash at any moment leaves the previous bank or the new one, never half of one.
- Every read-modify-write of a manifest holds the bank's cross-process lock, and the commit itself
  holds the store lock, which ``gc`` holds while it scans: ``gc`` never deletes an image a commit is
  about to reference, and two WebUI processes appending to one bank both keep their images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from lib_safe_denoiser.banks import archive
from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE, check_latents, encode_images
from lib_safe_denoiser.banks.files import TEMP_PREFIX, atomic_copy, atomic_write_bytes, sha256_file
from lib_safe_denoiser.banks.images import DEFAULT_RESIZE, load_image, perceptual_hash, thumbnail_png, validate_resize
from lib_safe_denoiser.banks.inputs import (
    IMAGE_EXTENSIONS,
    MAX_DESCRIPTION_LEN,
    ImageInput,
    InputLimits,
    SkippedFile,
    StagedImage,
    clean_text,
    find_images,
    stage_many,
    validate_bank_name,
    validate_tags,
)
from lib_safe_denoiser.banks.latent_cache import (
    CacheEntry,
    LatentCache,
    LatentDir,
    LatentKey,
    check_latent_hw,
    vae_dir,
)
from lib_safe_denoiser.banks.locks import StoreLocks
from lib_safe_denoiser.banks.manifest import (
    MANIFEST_FILE,
    SHA_RE,
    BankInfo,
    ImageEntry,
    Manifest,
    build_manifest,
    clean_owner,
    content_hash_of,
    now,
    parse_manifest,
)
from lib_safe_denoiser.banks.report import AddReport, nothing_usable
from lib_safe_denoiser.banks.similarity import NEAR_DUPLICATE_DISTANCE, check_distance, near_pairs
from lib_safe_denoiser.banks.sweep import CARRIED_LATENTS_DIR, newest_mtime, remove, sweep_banks, sweep_pool
from lib_safe_denoiser.errors import BankError, BankNotFoundError

__all__ = [
    "IMAGE_EXTENSIONS",
    "AddReport",
    "BankInfo",
    "BankStore",
    "CacheEntry",
    "content_hash_of",
    "find_images",
    "validate_bank_name",
]

logger = logging.getLogger(__name__)

GC_GRACE_S = 600.0
"""Unreferenced images younger than this survive ``gc``: another process may be about to commit them."""
IN_FLIGHT_MIN_AGE_S = 60.0
"""Temp files and manifest-less bank directories younger than this are writes in progress: ``gc``
never removes them, even with no grace period (a write refreshes the mtime as data flows)."""


class BankStore:
    """All banks under one root directory; safe to share between threads and processes.

    Nothing is created on disk until the first write, so pointing a store at a data directory
    is free. Methods raise ``BankError`` (``BankNotFoundError`` for unknown names) with messages
    meant for end users. ``cache_limit_bytes`` bounds the latent cache (None: no bound).
    """

    def __init__(self, root: str | os.PathLike, *, cache_limit_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.locks = StoreLocks(self.root)
        self.cache = LatentCache(self.root / "cache", cache_limit_bytes, self.locks.cache)

    @property
    def cache_limit_bytes(self) -> int | None:
        """The latent cache's size bound (None: none); settable, e.g. when a setting changes. A lower
        bound takes effect at the next cache write."""
        return self.cache.limit_bytes

    @cache_limit_bytes.setter
    def cache_limit_bytes(self, value: int | None) -> None:
        self.cache.limit_bytes = value

    # ---- paths -------------------------------------------------------------------------------
    @property
    def banks_dir(self) -> Path:
        return self.root / "banks"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def thumbs_dir(self) -> Path:
        return self.root / "thumbs"

    def _manifest_path(self, name: str) -> Path:
        return self.banks_dir / name / MANIFEST_FILE

    def carried_latents(self, name: str) -> LatentDir:
        """Where a latents-only bank keeps its latents (inside its own directory: never evicted)."""
        return LatentDir(self.banks_dir / name / CARRIED_LATENTS_DIR, carried=True)

    def latent_dir_for(self, info: BankInfo) -> LatentDir:
        return self.cache if info.has_images else self.carried_latents(info.name)

    # ---- reading -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of all banks (directories holding a manifest), sorted."""
        if not self.banks_dir.is_dir():
            return []
        found = []
        for d in self.banks_dir.iterdir():
            if d.name.startswith(".") or not (d / MANIFEST_FILE).is_file():
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
            except BankNotFoundError:  # deleted by another process since names() looked
                continue
            except BankError as e:
                logger.warning("safe denoiser: %s", e)
        return infos

    def get(self, name: str) -> BankInfo:
        return self.read_manifest(name).info

    def exists(self, name: str) -> bool:
        return self._manifest_path(validate_bank_name(name)).is_file()

    def image_entries(self, name: str) -> list[dict[str, str]]:
        """The bank's image records (sha256, file, source_name, added), in the bank's order."""
        return [e.as_dict() for e in self.read_manifest(name).images]

    def image_paths(self, name: str) -> list[Path]:
        """The bank's image files, in the bank's order; ``BankError`` if one has gone missing."""
        return self._image_paths(self.read_manifest(name))

    def image_path(self, name: str, sha256: str) -> Path:
        """The stored file of one image of bank ``name``."""
        manifest = self.read_manifest(name)
        entry = self._entry(manifest, sha256)
        self._require_images(manifest.info, "show its images")
        path = self.images_dir / entry.file
        if not path.is_file():
            raise BankError(f"bank {name!r} is damaged: image {entry.source_name} ({path}) is missing")
        return path

    def thumbnail(self, name: str, sha256: str) -> bytes:
        """A small PNG of one image; made once and kept under ``thumbs/`` (thumbnails depend only on
        the image bytes, so they are shared by every bank holding the image)."""
        path = self.image_path(name, sha256)
        thumb = self.thumbs_dir / f"{sha256}.png"
        with contextlib.suppress(FileNotFoundError):
            return thumb.read_bytes()
        data = thumbnail_png(load_image(path, name=path.name))
        try:
            atomic_write_bytes(thumb, data)
        except OSError as e:  # the thumbnail is good; only its cache is lost
            logger.warning("safe denoiser: cannot save thumbnail %s: %s", thumb, e)
        return data

    def near_duplicates(self, name: str, max_distance: int = NEAR_DUPLICATE_DISTANCE) -> list[tuple[str, str, int]]:
        """(sha_a, sha_b, Hamming distance) of image pairs in the bank that look alike, a before b in
        the bank's order; sorted by distance. Images whose hash is unknown (old manifest, file
        missing) are left out."""
        max_distance = check_distance(max_distance)
        manifest = self.read_manifest(name)
        hashes = self._phashes(manifest, {})
        known = [e for e in manifest.images if e.sha256 in hashes]
        values = [hashes[e.sha256] for e in known]
        pairs = near_pairs(values, values, max_distance, same_set=True)
        return sorted(((known[j].sha256, known[i].sha256, d) for i, j, d in pairs), key=lambda p: p[2])

    def read_manifest(self, name: str) -> Manifest:
        """The bank's manifest as stored now (no lock needed: manifests are replaced atomically)."""
        name = validate_bank_name(name)
        path = self._manifest_path(name)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            known = ", ".join(repr(n) for n in self.names()) or "none"
            raise BankNotFoundError(f"no bank named {name!r} (existing banks: {known})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BankError(f"cannot read bank {name!r}: {e}") from e
        try:
            return parse_manifest(name, json.loads(raw))
        except (ValueError, KeyError, TypeError) as e:
            raise BankError(
                f"bank {name!r} has a damaged manifest ({path}): {e}; delete the bank and create it again"
            ) from e

    def _image_paths(self, manifest: Manifest) -> list[Path]:
        self._require_images(manifest.info, "encode it for another model or size")
        paths = [self.images_dir / e.file for e in manifest.images]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise BankError(
                f"bank {manifest.info.name!r} is damaged: {len(missing)} image file(s) are missing, e.g. "
                f"{missing[0]}; re-create the bank from its source images"
            )
        return paths

    def _require_images(self, info: BankInfo, to: str) -> None:
        if not info.has_images:
            raise BankError(
                f"bank {info.name!r} has no images (it was imported with latents only), so it cannot {to}; "
                "import it again from an archive with images"
            )

    @staticmethod
    def _entry(manifest: Manifest, sha256: str) -> ImageEntry:
        entry = manifest.by_sha().get(sha256) if isinstance(sha256, str) else None
        if entry is None:
            raise BankError(f"bank {manifest.info.name!r} has no image with hash {str(sha256)[:64]!r}")
        return entry

    def _phashes(self, manifest: Manifest, known: dict[str, int]) -> dict[str, int]:
        """Perceptual hash per image: from the manifest, from ``known``, else computed from the file."""
        out: dict[str, int] = {}
        for e in manifest.images:
            if e.phash is not None:
                out[e.sha256] = e.phash
            elif e.sha256 in known:
                out[e.sha256] = known[e.sha256]
            elif e.file:
                try:
                    out[e.sha256] = perceptual_hash(load_image(self.images_dir / e.file, name=e.source_name))
                except (BankError, OSError) as err:
                    logger.warning("safe denoiser: no perceptual hash for %s: %s", e.source_name, err)
        return out

    # ---- writing -----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        images: Iterable[ImageInput],
        *,
        description: str = "",
        owner: str | None = None,
        tags: Iterable[str] = (),
        resize: str = DEFAULT_RESIZE,
        overwrite: bool = False,
        limits: InputLimits | None = None,
    ) -> AddReport:
        """Create bank ``name`` from ``images``; bad files are skipped and reported, the rest are saved.

        Every image is decoded before anything is written; if none is usable, ``BankError`` lists
        each and nothing changes. With ``overwrite`` an existing bank is replaced in one atomic step.
        """
        return self._create(
            name, images, (), description=description, owner=owner, tags=tags, resize=resize,
            overwrite=overwrite, limits=limits,
        )

    def add_folder(
        self,
        name: str,
        folder: str | os.PathLike,
        *,
        recursive: bool = False,
        overwrite: bool = False,
        description: str = "",
        owner: str | None = None,
        tags: Iterable[str] = (),
        resize: str = DEFAULT_RESIZE,
    ) -> AddReport:
        """Create bank ``name`` from the images in ``folder`` (files that are not images are reported).

        Files are taken in sorted path order, so the bank's order is reproducible; each image's
        ``source_name`` is its path relative to ``folder``.
        """
        name = validate_bank_name(name)
        files, not_images = find_images(folder, recursive=recursive)
        base = Path(folder)
        sources = [(f.relative_to(base).as_posix(), f) for f in files]
        return self._create(
            name, sources, not_images, description=description, owner=owner, tags=tags, resize=resize,
            overwrite=overwrite, limits=None,
        )

    def _create(
        self,
        name: str,
        images: Iterable[ImageInput],
        pre_skipped: Sequence[SkippedFile],
        *,
        description: str,
        owner: str | None,
        tags: Iterable[str],
        resize: str,
        overwrite: bool,
        limits: InputLimits | None,
    ) -> AddReport:
        name = validate_bank_name(name)
        description = clean_text(description, MAX_DESCRIPTION_LEN, "description")
        owner = clean_owner(owner)
        tags = validate_tags(tags)
        resize = validate_resize(resize)
        self.check_free(name, overwrite)  # fail fast, before decoding anything
        staged, duplicates, skipped = self._stage(images, limits, pre_skipped)
        near = _near_duplicates(staged, [], [])
        with self.locks.banks(name):
            replaced = self.check_free(name, overwrite)
            stamp = now()
            manifest = build_manifest(
                name, [_new_entry(s, stamp) for s in staged], created=stamp, updated=stamp,
                description=description, owner=owner, tags=tags, resize=resize,
            )
            self._store_images(staged)
            self.commit(manifest, manifest.images, self._restorer(staged))
        if replaced:
            self._gc_quietly()
        logger.info("safe denoiser: bank %r saved: %d images, hash %s", name, manifest.info.n_images,
                    manifest.info.short_hash)
        return AddReport(manifest.info, tuple(s.source_name for s in staged), tuple(duplicates), tuple(skipped),
                         tuple(near))

    def add_images(self, name: str, images: Iterable[ImageInput], *, limits: InputLimits | None = None) -> AddReport:
        """Append ``images`` to bank ``name``: images it holds already are reported as duplicates, bad
        files as skipped; ``BankError`` (listing each) only if no given file is usable."""
        name = validate_bank_name(name)
        before = self.read_manifest(name)  # fail fast (BankNotFoundError) before decoding anything
        self._require_images(before.info, "take more images")
        staged, duplicates, skipped = self._stage(images, limits, ())
        known = self._phashes(before, {})  # decodes old images (manifest version 1) outside the lock
        with self.locks.banks(name):
            current = self.read_manifest(name)
            self._require_images(current.info, "take more images")
            have = current.by_sha()
            new = [s for s in staged if s.sha256 not in have]
            duplicates = [*duplicates, *(s.source_name for s in staged if s.sha256 in have)]
            hashes = self._phashes(current, known)
            old = [e for e in current.images if e.sha256 in hashes]
            near = _near_duplicates(new, [e.source_name for e in old], [hashes[e.sha256] for e in old])
            info = current.info
            if new:
                stamp = now()
                entries = [dataclasses.replace(e, phash=hashes.get(e.sha256)) for e in current.images]
                manifest = build_manifest(
                    name, [*entries, *(_new_entry(s, stamp) for s in new)], created=info.created, updated=stamp,
                    description=info.description, owner=info.owner, tags=info.tags, resize=info.resize,
                )
                new_entries = manifest.images[len(entries):]
                self._store_images(new)
                self.commit(manifest, new_entries, self._restorer(new))
                info = manifest.info
        if new:
            self._gc_quietly()  # the old content's latent cache is no use any more
            logger.info("safe denoiser: added %d images to bank %r (now %d)", len(new), name, info.n_images)
        return AddReport(info, tuple(s.source_name for s in new), tuple(duplicates), tuple(skipped), tuple(near))

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: Iterable[str] | None = None,
        resize: str | None = None,
    ) -> BankInfo:
        """Change a bank's description, tags or resize policy (None: keep). A new resize policy means
        new latents: the next generation encodes the bank again."""
        name = validate_bank_name(name)
        changes: dict[str, Any] = {}
        if description is not None:
            changes["description"] = clean_text(description, MAX_DESCRIPTION_LEN, "description")
        if tags is not None:
            changes["tags"] = validate_tags(tags)
        if resize is not None:
            changes["resize"] = validate_resize(resize)
        with self.locks.banks(name):
            manifest = self.read_manifest(name)
            if changes.get("resize", manifest.info.resize) != manifest.info.resize:
                self._require_images(manifest.info, "change its resize policy")
            if not changes:
                return manifest.info
            info = dataclasses.replace(manifest.info, **changes, updated=now())
            self._write_manifest(Manifest(info, manifest.images))
        return info

    def rename(self, name: str, new_name: str) -> BankInfo:
        """Rename a bank (names are unique case-insensitively); its latent caches are keyed by content
        and stay valid. The directory move is the commit point."""
        name = validate_bank_name(name)
        new_name = validate_bank_name(new_name)
        with self.locks.banks(name, new_name), self.locks.store():
            manifest = self.read_manifest(name)
            if new_name == name:
                return manifest.info
            for existing in self.names():
                if existing.casefold() == new_name.casefold() and existing != name:
                    raise BankError(f"a bank named {existing!r} already exists (names are case-insensitive); "
                                    "pick another name")
            target = self.banks_dir / new_name
            if target.exists() and new_name.casefold() != name.casefold():
                shutil.rmtree(target)  # no manifest in it (checked above): leftovers of an interrupted write
            try:
                os.rename(self.banks_dir / name, target)
            except OSError as e:
                raise BankError(f"cannot rename bank {name!r} to {new_name!r}: {e}") from e
            info = dataclasses.replace(manifest.info, name=new_name, updated=now())
            self._write_manifest(Manifest(info, manifest.images))
        logger.info("safe denoiser: bank %r renamed to %r", name, new_name)
        return info

    def remove_images(self, name: str, sha256s: Iterable[str]) -> BankInfo:
        """Remove images (by sha256) from a bank; ``BankError`` naming any hash the bank lacks, or if
        nothing would be left. Their files go at the next ``gc`` unless another bank holds them."""
        name = validate_bank_name(name)
        wanted = list(sha256s) if not isinstance(sha256s, str) else [sha256s]
        bad = [s for s in wanted if not (isinstance(s, str) and SHA_RE.match(s))]
        if bad:
            raise BankError(f"not an image hash (64 lowercase hex digits): {', '.join(repr(b) for b in bad[:5])}")
        if not wanted:
            raise BankError("no images to remove were given")
        with self.locks.banks(name):
            manifest = self.read_manifest(name)
            self._require_images(manifest.info, "change its images")
            have = manifest.by_sha()
            unknown = [s for s in wanted if s not in have]
            if unknown:
                raise BankError(f"bank {name!r} has no image(s) {', '.join(s[:10] for s in unknown)}; nothing removed")
            drop = set(wanted)
            keep = [e for e in manifest.images if e.sha256 not in drop]
            if not keep:
                raise BankError(f"removing these would leave bank {name!r} empty; delete the bank instead")
            i = manifest.info
            manifest = build_manifest(name, keep, created=i.created, updated=now(), description=i.description,
                                      owner=i.owner, tags=i.tags, resize=i.resize)
            self._write_manifest(manifest)
        self._gc_quietly()
        return manifest.info

    def delete(self, name: str) -> None:
        """Remove bank ``name``; its images and caches go too unless another bank shares them."""
        name = validate_bank_name(name)
        with self.locks.banks(name):
            path = self._manifest_path(name)
            if not path.is_file():
                self.read_manifest(name)  # raises BankNotFoundError with the list of known banks
            try:
                path.unlink()  # the commit point: without its manifest the bank is gone
            except OSError as e:
                raise BankError(f"cannot delete bank {name!r}: {e}") from e
            shutil.rmtree(path.parent, ignore_errors=True)
        self._gc_quietly()
        logger.info("safe denoiser: bank %r deleted", name)

    def check_free(self, name: str, overwrite: bool) -> bool:
        """True if bank ``name`` exists and may be replaced; ``BankError`` if the name is taken."""
        for existing in self.names():
            if existing.casefold() == name.casefold() and existing != name:
                raise BankError(
                    f"a bank named {existing!r} already exists (names are case-insensitive); pick another name"
                )
        if not self._manifest_path(name).is_file():
            return False
        if not overwrite:
            raise BankError(
                f"bank {name!r} already exists; pick another name, add images to it, or overwrite it "
                "(overwrite=True, --overwrite)"
            )
        return True

    def commit(
        self,
        manifest: Manifest,
        new_entries: Sequence[ImageEntry],
        restore: Callable[[ImageEntry], None],
        carried: Sequence[Path] = (),
    ) -> None:
        """Make ``manifest`` the bank's state. The caller holds the bank's lock and has stored the
        files of ``new_entries`` (and written the ``carried`` latent files); under the store lock,
        so that no ``gc`` scan interleaves, any such file a ``gc`` removed meanwhile is restored."""
        with self.locks.store():
            for e in new_entries:
                if e.file and not (self.images_dir / e.file).is_file():
                    restore(e)
            lost = [p for p in carried if not p.is_file()]
            if lost:
                raise BankError(f"latent file {lost[0]} vanished while it was being saved; try again")
            self._write_manifest(manifest)

    def _write_manifest(self, manifest: Manifest) -> None:
        try:
            atomic_write_bytes(self._manifest_path(manifest.info.name), manifest.to_json())
        except OSError as e:
            raise BankError(f"cannot save bank {manifest.info.name!r}: {e}") from e

    def _stage(
        self, images: Iterable[ImageInput], limits: InputLimits | None, pre_skipped: Sequence[SkippedFile]
    ) -> tuple[list[StagedImage], list[str], list[SkippedFile]]:
        result = stage_many(images, limits if limits is not None else InputLimits())
        skipped = [*pre_skipped, *result.skipped]
        if not result.staged:
            raise nothing_usable(skipped)
        return list(result.staged), list(result.duplicates), skipped

    def _store_images(self, staged: Iterable[StagedImage]) -> None:
        for s in staged:
            self._store_image(s)

    def _store_image(self, s: StagedImage) -> None:
        target = self.images_dir / f"{s.sha256}.{s.ext}"
        try:
            if s.data is not None:
                self.put_pool_bytes(target.name, s.sha256, s.data)
            elif not self._pool_has(target, s.sha256):
                assert s.path is not None
                atomic_copy(s.path, target, expected_sha256=s.sha256)
        except OSError as e:
            raise BankError(f"cannot store image {s.source_name} in {self.images_dir}: {e}") from e

    def put_pool_bytes(self, file: str, sha256: str, data: bytes) -> None:
        """Store one image's bytes in the pool (skipped if an intact copy is there)."""
        target = self.images_dir / file
        if not self._pool_has(target, sha256):
            atomic_write_bytes(target, data)

    @staticmethod
    def _pool_has(target: Path, sha256: str) -> bool:
        """Whether ``target`` holds these bytes; refreshes its mtime so a concurrent ``gc`` keeps it."""
        try:
            if sha256_file(target) == sha256:
                os.utime(target)
                return True
            logger.warning("safe denoiser: replacing damaged pool image %s", target)
        except OSError:
            pass
        return False

    def _restorer(self, staged: Sequence[StagedImage]) -> Callable[[ImageEntry], None]:
        by_sha = {s.sha256: s for s in staged}
        return lambda e: self._store_image(by_sha[e.sha256])

    # ---- clean-up ----------------------------------------------------------------------------
    def gc(self, *, grace_s: float = GC_GRACE_S) -> int:
        """Delete files no bank references (pool images, latent caches, thumbnails, leftovers of
        interrupted writes); returns how many went.

        Runs only if every manifest is readable: a damaged manifest might reference files that would
        otherwise look orphaned. Unreferenced images younger than ``grace_s`` are kept, because
        another process may have stored them and not yet committed its manifest (and if one goes
        anyway, that commit stores it again). Files of writes in progress (temp files, a bank
        directory whose manifest is not written yet) are kept for ``IN_FLIGHT_MIN_AGE_S`` at least,
        whatever ``grace_s``: deleting them would make that write fail.
        """
        if not self.root.is_dir():
            return 0
        with self.locks.store():
            manifests = []
            for n in self.names():
                try:
                    manifests.append(self.read_manifest(n))
                except BankError as e:
                    logger.warning("safe denoiser: clean-up skipped: %s", e)
                    return 0
            used_shas = {e.sha256 for m in manifests for e in m.images}
            used_hashes = {m.info.content_hash for m in manifests if m.info.has_images}
            now_s = time.time()
            cutoff = now_s - grace_s
            in_flight = min(cutoff, now_s - IN_FLIGHT_MIN_AGE_S)
            removed = sweep_pool(self.images_dir, used_shas, cutoff, in_flight)
            removed += sweep_pool(self.thumbs_dir, used_shas, cutoff, in_flight)
            removed += self.cache.sweep(used_hashes, in_flight)
            removed += sweep_banks(self.banks_dir, {m.info.name: m.info for m in manifests}, in_flight)
            removed += sum(remove(f) for f in self.root.glob(TEMP_PREFIX + "*") if newest_mtime(f) < in_flight)
            return removed

    def _gc_quietly(self) -> None:
        try:
            self.gc()
        except (OSError, BankError) as e:  # the operation itself succeeded; leftovers are swept next time
            logger.warning("safe denoiser: clean-up failed: %s", e)

    # ---- archives ----------------------------------------------------------------------------
    def export_bank(self, name: str, dest: str | os.PathLike, *, latents: str = "include") -> Path:
        """Write bank ``name`` to one .zip file (see archive.py); ``dest`` may be a folder."""
        return archive.export_bank(self, name, Path(dest), latents=latents)

    def import_bank(
        self,
        src: str | os.PathLike | bytes,
        *,
        name: str | None = None,
        owner: str | None = None,
        overwrite: bool = False,
    ) -> BankInfo:
        """Add the bank in an archive made by ``export_bank``, checked in full before it is committed."""
        info = archive.import_bank(self, src, name=name, owner=owner, overwrite=overwrite)
        self._gc_quietly()
        return info

    # ---- latents -----------------------------------------------------------------------------
    def latents(
        self,
        name: str,
        *,
        encoder: Callable[[torch.Tensor], torch.Tensor],
        vae_id: str,
        latent_hw: tuple[int, int],
        batch_size: int = 4,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """The bank's latents [N, C, h, w] (float32, CPU, bank order) for this VAE and latent size.

        Read from the disk cache when present and sound; otherwise every image is encoded with
        ``encoder`` (pixels [n, 3, 8h, 8w] in [0, 1], fitted by the bank's resize policy -> scaled
        latents [n, C, h, w]) and the cache written. A damaged cache file is logged and rebuilt.
        No lock is held while encoding, so the UI stays usable; concurrent encodes of one key both
        succeed and the last atomic write wins. ``cancel()`` is checked between batches
        (``EncodeCancelled``; nothing is cached). A latents-only bank serves only the keys it carries.
        """
        h, w = check_latent_hw(latent_hw)
        vae_dir(vae_id)
        manifest = self.read_manifest(name)
        info = manifest.info
        key = LatentKey(info.content_hash, vae_id, info.resize, (h, w))
        rows = _bank_rows(manifest)
        if not info.has_images:
            try:
                carried = self.carried_latents(info.name).load(key, info.n_images, rows)
            except BankError as e:
                raise BankError(f"bank {info.name!r}: its latent file for {vae_id!r} at {h}x{w} is damaged ({e}); "
                                "import the bank again") from e
            if carried is None:
                raise self._not_carried(info, key)
            return carried
        cached = self.cache.load(key, info.n_images, rows)
        if cached is not None:
            return cached

        paths = self._image_paths(manifest)
        order = _cache_order(manifest)
        logger.info("safe denoiser: encoding bank %r (%d images) for %s at %dx%d latents (%s)",
                    info.name, info.n_images, vae_id, h, w, info.resize)
        pixel_hw = (h * LATENT_DOWNSCALE, w * LATENT_DOWNSCALE)
        latents = encode_images([paths[i] for i in order], encoder, pixel_hw, resize=info.resize,
                                batch_size=batch_size, progress=progress, cancel=cancel)
        latents = check_latents(latents, info.n_images, (h, w))
        try:
            self.cache.write(key, latents)
        except OSError as e:  # the latents are good; only the cache is lost
            logger.warning("safe denoiser: cannot write latent cache %s: %s", self.cache.path(key), e)
        return latents if rows is None else latents.index_select(0, rows)

    def _not_carried(self, info: BankInfo, key: LatentKey) -> BankError:
        carried = [e for _, e in self.carried_latents(info.name).entries(info.content_hash)]
        listed = ", ".join(f"{e.vae_id!r} at {e.latent_hw[0]}x{e.latent_hw[1]} ({e.resize})" for e in carried)
        h, w = key.latent_hw
        return BankError(
            f"bank {info.name!r} has no images (it was imported with latents only) and carries no latents for "
            f"VAE {key.vae_id!r} at {h}x{w} ({key.resize}); it carries: {listed or 'nothing'}. Use a model and "
            "image size it carries, or import the bank with its images"
        )

    def has_latents(self, name: str, vae_id: str, latent_hw: tuple[int, int]) -> bool:
        """Whether a latent file exists for this key (not validated): lets a caller decide whether
        ``latents`` will need the VAE (and a progress display) before calling it."""
        info = self.get(name)
        key = LatentKey(info.content_hash, vae_id, info.resize, check_latent_hw(latent_hw))
        return self.latent_dir_for(info).path(key).is_file()

    def cache_status(self, name: str) -> list[CacheEntry]:
        """The latent files this bank can use: cached ones (any VAE, size, resize policy), or for a
        latents-only bank the ones it carries."""
        info = self.get(name)
        return [e for _, e in self.latent_dir_for(info).entries(info.content_hash)]

    def drop_cache(self, name: str, *, vae_id: str | None = None, latent_hw: tuple[int, int] | None = None) -> int:
        """Delete this bank's cached latents (only those of ``vae_id`` / ``latent_hw`` if given); returns
        how many files went. Latents a latents-only bank carries are its data and are not touched."""
        return self.cache.drop(self.get(name).content_hash, vae_id=vae_id, latent_hw=latent_hw)


def _near_duplicates(
    new: Sequence[StagedImage], old_names: Sequence[str], old_hashes: Sequence[int]
) -> list[tuple[str, str]]:
    """(new source, earlier source) for each new image that looks like one already in the bank or
    like an earlier one of the same upload."""
    names = [*old_names, *(s.source_name for s in new)]
    pairs = near_pairs([s.phash for s in new], [*old_hashes, *(s.phash for s in new)], NEAR_DUPLICATE_DISTANCE)
    return [(new[i].source_name, names[j]) for i, j, _ in pairs if j < len(old_names) + i]


def _new_entry(s: StagedImage, added: str) -> ImageEntry:
    return ImageEntry(s.sha256, f"{s.sha256}.{s.ext}", s.source_name, added, s.phash)


def _cache_order(manifest: Manifest) -> list[int]:
    """Bank indices in sorted-sha256 order: the row order of latent files."""
    return sorted(range(len(manifest.images)), key=lambda i: manifest.images[i].sha256)


def _bank_rows(manifest: Manifest) -> torch.Tensor | None:
    """For each bank index, its row in a latent file; None if the orders agree (no permutation)."""
    order = _cache_order(manifest)
    if order == sorted(order):
        return None
    rows = torch.empty(len(order), dtype=torch.long)
    rows[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return rows
