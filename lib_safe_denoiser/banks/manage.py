"""The bank-management tab's actions, as plain functions over a ``BankStore``.

Every action takes the ``User`` asking (who they are, whether they are an operator), checks what
that user may see or change, and answers with an ``Outcome``: a message meant for the person
who clicked, optional detail lines (one per skipped file, ...) and the data the UI shows. A
``BankError`` (a bad name, a corrupt upload, a missing bank, a cancelled encode) becomes an
``Outcome`` that is not ``ok``; nothing here raises into the UI for a user's mistake. Kept free of
gradio and the WebUI so that the same rules can be tested, and reused, without either.

Who may do what is decided by ``lib_safe_denoiser.policy.users`` (the REST routes apply the same
rules): everyone sees the shared banks and their own, operators see every bank; only operators
change shared banks, create them and read server folders.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lib_safe_denoiser.banks.archive import ARCHIVE_SUFFIX, LATENT_MODES
from lib_safe_denoiser.banks.encode import LATENT_DOWNSCALE
from lib_safe_denoiser.banks.images import DEFAULT_RESIZE
from lib_safe_denoiser.banks.inputs import (
    MIB,
    InputLimits,
    SkippedFile,
    find_images,
    images_from_zip,
    validate_bank_name,
    validate_tags,
)
from lib_safe_denoiser.banks.similarity import NEAR_DUPLICATE_DISTANCE
from lib_safe_denoiser.banks.store import AddReport, BankInfo, BankStore, CacheEntry
from lib_safe_denoiser.concepts.clip_judge import ClipJudge
from lib_safe_denoiser.concepts.constants import DEFAULT_CLIP_DUPLICATE_COSINE, DEFAULT_CURATION_THRESHOLD
from lib_safe_denoiser.concepts.curation import CurationReport, score_images
from lib_safe_denoiser.errors import BankError, BankNotFoundError, SafeDenoiserError
from lib_safe_denoiser.policy.users import User, can_edit, can_see, owner_for_new_bank, require_edit, require_operator

GALLERY_PAGE_SIZE = 48
"""Thumbnails per gallery page: six rows of eight, quick to send even for banks of thousands."""
MAX_NEAR_DUPLICATE_DISTANCE = 16
"""Largest distance the tab offers: beyond a quarter of the 64 bits, "alike" stops meaning the same picture."""
DEFAULT_EXPORT_LATENTS = "include"
EXPORT_KEEP_S = 3600.0
"""Exported archives older than this are removed from the export folder when the next export starts."""
MAX_DETAIL_LINES = 50
"""Detail lines shown under a message; the rest are counted, not listed."""
CACHE_LABEL_SEPARATOR = " | "
ALL_CACHES = "all latent caches of this bank"


# ---------------------------------------------------------------------------------- who asks
def describe_user(user: User) -> str:
    """A sentence for the top of the tab: who the tab thinks you are and what you may do."""
    if user.name is None:
        rights = "who may manage every bank" if user.operator else "who may only look at the shared banks"
        return f"No sign-in (the WebUI runs without --gradio-auth): everyone is one anonymous user, {rights}."
    if user.operator:
        return (f"Signed in as {user.name}, an operator: you see every bank, manage the shared ones and your own, "
                "and create shared banks.")
    return f"Signed in as {user.name}: you see the shared banks and your own, and manage your own."


# ---------------------------------------------------------------------------------- answers
@dataclass(frozen=True)
class Outcome:
    """What one action did: ``message`` for the status line, ``details`` as a list under it."""

    ok: bool
    message: str
    details: tuple[str, ...] = ()
    data: Any = None


def _fail(message: str, details: Iterable[str] = ()) -> Outcome:
    return Outcome(False, message, _bounded(details))


def _bounded(lines: Iterable[str]) -> tuple[str, ...]:
    lines = list(lines)
    if len(lines) <= MAX_DETAIL_LINES:
        return tuple(lines)
    return (*lines[:MAX_DETAIL_LINES], f"... and {len(lines) - MAX_DETAIL_LINES} more")


def _answers(action: Callable[..., Outcome]) -> Callable[..., Outcome]:
    """Turn the errors a user can cause (``BankError``) or meet (a full disk) into a failed Outcome."""

    @functools.wraps(action)
    def run(*args: Any, **kwargs: Any) -> Outcome:
        try:
            return action(*args, **kwargs)
        except SafeDenoiserError as e:  # BankError (EncodeCancelled too), AccessError
            return _fail(_sentence(str(e)))
        except OSError as e:
            return _fail(f"The server could not read or write a file: {e}")

    return run


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else "Something went wrong."


# ---------------------------------------------------------------------------------- reading
def visible_banks(store: BankStore, user: User) -> list[BankInfo]:
    """The banks ``user`` may see, sorted by name (unreadable banks are left out by the store)."""
    return [info for info in store.list() if can_see(info, user)]


def bank_choices(store: BankStore, user: User) -> list[str]:
    return [info.name for info in visible_banks(store, user)]


def _visible(store: BankStore, user: User, name: str | None) -> BankInfo:
    if not name:
        raise BankError("choose a bank first")
    try:
        info = store.get(name)
    except BankNotFoundError:
        info = None
    if info is None or not can_see(info, user):
        raise BankNotFoundError(f"no bank named {name!r} that you can see; press refresh to update the list")
    return info


def _editable(store: BankStore, user: User, name: str | None) -> BankInfo:
    info = _visible(store, user, name)
    require_edit(info, user)
    return info


def describe_bank(info: BankInfo) -> list[tuple[str, str]]:
    """(label, value) pairs that present a bank (its description is shown on its own)."""
    return [
        ("Name", info.name),
        ("Images", str(info.n_images) if info.has_images else f"{info.n_images} (imported as latents only)"),
        ("Owner", "shared" if info.owner is None else info.owner),
        ("Content hash", info.short_hash),
        ("Resize", info.resize),
        ("Tags", ", ".join(info.tags) or "none"),
        ("Created", info.created),
        ("Updated", info.updated or info.created),
    ]


@_answers
def open_bank(store: BankStore, user: User, name: str | None) -> Outcome:
    """The chosen bank's info (``data``), with a message saying what you may do with it."""
    info = _visible(store, user, name)
    rights = "you can change it" if can_edit(info, user) else "read-only for you"
    return Outcome(True, f"Bank {info.name!r}: {info.n_images} images, {rights}.", data=info)


# ---------------------------------------------------------------------------------- the gallery
@dataclass(frozen=True)
class Thumb:
    sha256: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class GalleryPage:
    bank: str
    page: int
    pages: int
    total: int
    page_size: int
    items: tuple[Thumb, ...]

    @property
    def label(self) -> str:
        if not self.total:
            return "No images."
        first = (self.page - 1) * self.page_size + 1
        return (f"Page {self.page} of {self.pages}: images {first}-{first + len(self.items) - 1} "
                f"of {self.total}")


def page_count(total: int, page_size: int = GALLERY_PAGE_SIZE) -> int:
    return max(1, -(-total // page_size))


@_answers
def gallery_page(store: BankStore, user: User, name: str | None, page: int | float | None,
                 page_size: int = GALLERY_PAGE_SIZE) -> Outcome:
    """Thumbnails of one page of the bank (pages count from 1; out-of-range pages are clamped)."""
    info = _visible(store, user, name)
    if not info.has_images:
        empty = GalleryPage(info.name, 1, 1, 0, page_size, ())
        return Outcome(True, f"Bank {info.name!r} was imported as latents only: it has no images to show.",
                       data=empty)
    entries = store.image_entries(info.name)
    pages = page_count(len(entries), page_size)
    page = min(max(1, int(page or 1)), pages)
    start = (page - 1) * page_size
    thumbs, missing = [], []
    for entry in entries[start:start + page_size]:
        try:
            thumbs.append(Thumb(entry["sha256"], entry["source_name"], store.thumbnail(info.name, entry["sha256"])))
        except BankError as e:
            missing.append(f"{entry['source_name']}: {e}")
    result = GalleryPage(info.name, page, pages, len(entries), page_size, tuple(thumbs))
    if missing:
        return Outcome(False, f"{len(missing)} image(s) of bank {info.name!r} could not be shown.", _bounded(missing),
                       data=result)
    return Outcome(True, result.label, data=result)


# ---------------------------------------------------------------------------------- adding images
def collect_uploads(paths: Sequence[str | os.PathLike], limits: InputLimits | None = None,
                    ) -> tuple[list[tuple[str, Any]], list[SkippedFile]]:
    """Uploaded files as ``(source name, path or bytes)`` for the store, zips opened in place.

    A zip's members are named ``archive.zip/inner/path.png`` so a report points at the right file;
    a zip that cannot be read is reported as skipped, and the other uploads proceed.
    """
    sources: list[tuple[str, Any]] = []
    skipped: list[SkippedFile] = []
    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() == ARCHIVE_SUFFIX:
            try:
                members, bad = images_from_zip(path, limits)
            except BankError as e:
                skipped.append(SkippedFile(path.name, str(e)))
                continue
            sources += [(f"{path.name}/{member}", data) for member, data in members]
            skipped += [SkippedFile(f"{path.name}/{s.name}", s.reason) for s in bad]
        else:
            sources.append((path.name, path))
    return sources, skipped


def _no_images(skipped: Sequence[SkippedFile], what: str) -> BankError:
    lines = "; ".join(f"{s.name} ({s.reason})" for s in skipped[:MAX_DETAIL_LINES])
    return BankError(f"{what}: none of the files is a usable image: {lines}" if lines else f"{what}: no files given")


def _report_outcome(verb: str, report: AddReport, extra_skipped: Sequence[SkippedFile] = ()) -> Outcome:
    """One line of what happened, and a detail line per duplicate, skipped file and near-duplicate."""
    info = report.info
    skipped = [*extra_skipped, *report.skipped]
    head = f"{verb} {len(report.added)} image(s) {'in' if verb == 'Created' else 'to'} bank {info.name!r}"
    parts = [f"{head} (now {info.n_images})"]
    if report.duplicates:
        parts.append(f"{len(report.duplicates)} duplicate(s) left out")
    if skipped:
        parts.append(f"{len(skipped)} file(s) skipped")
    if report.near_duplicates:
        parts.append(f"{len(report.near_duplicates)} near-duplicate(s) to check")
    details = [f"Skipped {s.name}: {s.reason}" for s in skipped]
    details += [f"Duplicate, left out: {name}" for name in report.duplicates]
    details += [f"Near-duplicate: {new} looks like {old}" for new, old in report.near_duplicates]
    return Outcome(True, "; ".join(parts) + ".", _bounded(details), data=report)


@_answers
def create_bank(store: BankStore, user: User, name: str, uploads: Sequence[str | os.PathLike], *,
                description: str = "", tags: str | Iterable[str] = "", resize: str = DEFAULT_RESIZE,
                shared: bool = False, limits: InputLimits | None = None) -> Outcome:
    """A new bank from uploaded images and zips; bad files are reported and the good ones kept."""
    name = validate_bank_name((name or "").strip())
    owner = owner_for_new_bank(user, shared)
    if not uploads:
        raise BankError("add some images (or a .zip of images) to create the bank from")
    store.check_free(name, False)  # before reading the uploads
    sources, skipped = collect_uploads(uploads, limits)
    if not sources:
        raise _no_images(skipped, f"bank {name!r} was not created")
    report = store.create(name, sources, description=description or "", owner=owner, tags=validate_tags(tags),
                          resize=resize, limits=limits)
    return _report_outcome("Created", report, skipped)


@_answers
def add_uploads(store: BankStore, user: User, name: str | None, uploads: Sequence[str | os.PathLike], *,
                limits: InputLimits | None = None) -> Outcome:
    """Append uploaded images and zips to a bank the user may change."""
    info = _editable(store, user, name)
    if not uploads:
        raise BankError("choose some images (or a .zip of images) to add first")
    sources, skipped = collect_uploads(uploads, limits)
    if not sources:
        raise _no_images(skipped, f"nothing was added to bank {info.name!r}")
    return _report_outcome("Added", store.add_images(info.name, sources, limits=limits), skipped)


def _check_folder_rights(user: User, folder_import: bool, folder: str) -> None:
    if not folder_import:
        raise BankError("importing from a server folder is turned off in the settings")
    require_operator(user, "import images from a folder on the server")
    if not (folder or "").strip():
        raise BankError("type the server folder to import from")


@_answers
def create_bank_from_folder(store: BankStore, user: User, name: str, folder: str, *, folder_import: bool,
                            recursive: bool = False, description: str = "", tags: str | Iterable[str] = "",
                            resize: str = DEFAULT_RESIZE, shared: bool = False) -> Outcome:
    """A new bank from a folder on the server (operators only, where the settings allow it)."""
    _check_folder_rights(user, folder_import, folder)
    report = store.add_folder((name or "").strip(), folder.strip(), recursive=bool(recursive),
                              description=description or "", owner=owner_for_new_bank(user, shared),
                              tags=validate_tags(tags), resize=resize)
    return _report_outcome("Created", report)


@_answers
def add_folder(store: BankStore, user: User, name: str | None, folder: str, *, folder_import: bool,
               recursive: bool = False) -> Outcome:
    """Append a server folder's images to a bank (operators only, where the settings allow it)."""
    _check_folder_rights(user, folder_import, folder)
    info = _editable(store, user, name)
    base = Path(folder.strip())
    files, skipped = find_images(base, recursive=bool(recursive))
    sources = [(f.relative_to(base).as_posix(), f) for f in files]
    if not sources:
        raise _no_images(skipped, f"nothing was added to bank {info.name!r}")
    return _report_outcome("Added", store.add_images(info.name, sources), skipped)


# ---------------------------------------------------------------------------------- changing a bank
@_answers
def remove_images(store: BankStore, user: User, name: str | None, sha256s: Iterable[str]) -> Outcome:
    info = _editable(store, user, name)
    chosen = list(dict.fromkeys(s for s in sha256s if s))
    if not chosen:
        raise BankError("select the images to remove first (click their thumbnails)")
    after = store.remove_images(info.name, chosen)
    removed = info.n_images - after.n_images
    return Outcome(True, f"Removed {removed} image(s) from bank {info.name!r} (now {after.n_images}).", data=after)


@_answers
def update_details(store: BankStore, user: User, name: str | None, *, description: str,
                   tags: str | Iterable[str], resize: str) -> Outcome:
    info = _editable(store, user, name)
    after = store.update(info.name, description=description or "", tags=validate_tags(tags), resize=resize)
    note = ""
    if after.resize != info.resize:
        note = f" Its latents will be encoded again with the {after.resize!r} resize policy when next used."
    return Outcome(True, f"Saved the details of bank {info.name!r}.{note}", data=after)


@_answers
def rename_bank(store: BankStore, user: User, name: str | None, new_name: str) -> Outcome:
    info = _editable(store, user, name)
    new_name = (new_name or "").strip()
    if new_name == info.name:
        raise BankError(f"the bank is already called {new_name!r}")
    after = store.rename(info.name, new_name)
    return Outcome(True, f"Renamed bank {info.name!r} to {after.name!r}.", data=after)


@_answers
def delete_bank(store: BankStore, user: User, name: str | None, confirmed: bool) -> Outcome:
    """Delete a bank, only when the deletion was confirmed (a second, deliberate input)."""
    info = _editable(store, user, name)
    if not confirmed:
        raise BankError(f"tick 'Yes, delete {info.name}' first: deleting a bank cannot be undone")
    store.delete(info.name)
    return Outcome(True, f"Deleted bank {info.name!r} ({info.n_images} images) and its latent caches.")


# ---------------------------------------------------------------------------------- import / export
def prune_exports(folder: Path, max_age_s: float = EXPORT_KEEP_S) -> None:
    """Remove earlier exports: each lives in its own sub-folder, kept long enough to be downloaded."""
    if not folder.is_dir():
        return
    cutoff = time.time() - max_age_s
    for sub in folder.iterdir():
        try:
            old = sub.is_dir() and sub.stat().st_mtime < cutoff
        except OSError:
            continue
        if old:
            shutil.rmtree(sub, ignore_errors=True)


@_answers
def export_bank(store: BankStore, user: User, name: str | None, latents: str, out_dir: str | os.PathLike,
                ) -> Outcome:
    """The bank as a portable .zip (``data``: its path) under a fresh sub-folder of ``out_dir``."""
    info = _visible(store, user, name)
    if latents not in LATENT_MODES:
        raise BankError(f"latents must be one of {', '.join(LATENT_MODES)}, got {latents!r}")
    base = Path(out_dir)
    prune_exports(base)
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=base))
    path = store.export_bank(info.name, folder / f"{info.name}{ARCHIVE_SUFFIX}", latents=latents)
    size = path.stat().st_size
    what = {"none": "images only", "include": "images and cached latents", "only": "cached latents only"}[latents]
    return Outcome(True, f"Exported bank {info.name!r} ({what}, {size / MIB:.1f} MiB): download it below.",
                   data=path)


@_answers
def import_bank(store: BankStore, user: User, upload: str | os.PathLike | bytes | None, *, name: str = "",
                overwrite: bool = False, shared: bool = False) -> Outcome:
    """A bank from an exported .zip; replacing an existing bank needs ``overwrite`` and the right to change it."""
    if not upload:
        raise BankError("choose an exported bank .zip to import first")
    name = validate_bank_name(name.strip()) if (name or "").strip() else None
    owner = owner_for_new_bank(user, shared)
    if overwrite:
        if name is None:
            raise BankError("type the name of the bank to replace (the archive's own name is not used then)")
        if store.exists(name):
            existing = store.get(name)
            if not can_see(existing, user):
                raise BankError(f"a bank named {name!r} already exists; choose another name")
            require_edit(existing, user)
    source = upload if isinstance(upload, bytes) else Path(upload)
    info = store.import_bank(source, name=name, owner=owner, overwrite=bool(overwrite))
    kind = "" if info.has_images else " (latents only: it can steer generations with the VAE it was encoded by)"
    return Outcome(True, f"Imported bank {info.name!r} with {info.n_images} images{kind}.", data=info)


# ---------------------------------------------------------------------------------- latents
def cache_label(entry: CacheEntry) -> str:
    """A cache as a choice in the "drop" list; ``parse_cache_label`` reads it back."""
    h, w = entry.latent_hw
    return f"{h}x{w}{CACHE_LABEL_SEPARATOR}{entry.vae_id}"


def cache_cells(entry: CacheEntry) -> list[Any]:
    """A cache as a row of the tab's table (``CACHE_COLUMNS``)."""
    h, w = entry.latent_hw
    note = "carried by the bank (cannot be dropped)" if entry.carried else ""
    pixels = f"{LATENT_DOWNSCALE * w}x{LATENT_DOWNSCALE * h}"
    return [entry.vae_id, f"{h}x{w}", pixels, entry.resize, round(entry.bytes / MIB, 2), entry.last_used, note]


CACHE_COLUMNS = ("VAE", "Latent HxW", "For images WxH", "Resize", "MiB", "Last used", "Note")


def parse_cache_label(label: str) -> tuple[str, tuple[int, int]]:
    size, sep, vae_id = (label or "").partition(CACHE_LABEL_SEPARATOR)
    h, x, w = size.partition("x")
    if not sep or not x or not h.isdigit() or not w.isdigit() or not vae_id:
        raise BankError(f"choose a latent cache from the list (got {label!r})")
    return vae_id, (int(h), int(w))


@_answers
def cache_rows(store: BankStore, user: User, name: str | None) -> Outcome:
    """One row per cached latent size and VAE (``data``: list of CacheEntry)."""
    info = _visible(store, user, name)
    rows = store.cache_status(info.name)
    total = sum(r.bytes for r in rows)
    if not rows:
        return Outcome(True, f"Bank {info.name!r} has no cached latents yet: they are encoded on first use, "
                             "or now with 'Encode now'.", data=rows)
    return Outcome(True, f"Bank {info.name!r}: {len(rows)} latent cache(s), {total / MIB:.1f} MiB.", data=rows)


@_answers
def drop_cache(store: BankStore, user: User, name: str | None, choice: str | None) -> Outcome:
    """Delete one latent cache (or all of them): they are encoded again when next needed."""
    info = _editable(store, user, name)
    if not choice:
        raise BankError("choose the latent cache to drop first")
    if choice == ALL_CACHES:
        n = store.drop_cache(info.name)
    else:
        vae_id, hw = parse_cache_label(choice)
        n = store.drop_cache(info.name, vae_id=vae_id, latent_hw=hw)
    if not n:
        return _fail(f"Nothing to drop: bank {info.name!r} has no such latent cache (any more).")
    return Outcome(True, f"Dropped {n} latent cache file(s) of bank {info.name!r}; "
                         "they are encoded again when next needed.")


class EncodeResult(Protocol):
    """What the encode callable returns (``safe_denoiser_webui.encoding.EncodeResult``)."""

    bank: str
    vae_id: str
    latent_hw: tuple[int, int]
    n_images: int


Encode = Callable[[str, int, int, Callable[[int, int], None] | None], EncodeResult]
"""``encode(bank, width, height, progress)``: encodes with the loaded model's VAE; ``BankError``
(``EncodeCancelled`` when interrupted) on failure."""


@_answers
def encode_bank(store: BankStore, user: User, name: str | None, width: float | None, height: float | None,
                encode: Encode, progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Encode a bank now for a generation size, so the first generation does not wait for it."""
    info = _visible(store, user, name)
    if not info.has_images:
        raise BankError(f"bank {info.name!r} was imported as latents only: it has no images to encode")
    try:
        w, h = int(width or 0), int(height or 0)
    except (TypeError, ValueError):
        raise BankError(f"width and height must be whole numbers, got {width!r} x {height!r}") from None
    result = encode(info.name, w, h, progress)
    lh, lw = result.latent_hw
    return Outcome(True, f"Bank {info.name!r} is encoded for {result.vae_id} at {w}x{h} "
                         f"({lh}x{lw} latents, {result.n_images} images).", data=result)


# ---------------------------------------------------------------------------------- near duplicates
@_answers
def near_duplicate_rows(store: BankStore, user: User, name: str | None,
                        max_distance: float = NEAR_DUPLICATE_DISTANCE) -> Outcome:
    """Pairs of images that look alike (``data``: [image, looks like, distance] rows, closest first)."""
    info = _visible(store, user, name)
    if not info.has_images:
        raise BankError(f"bank {info.name!r} was imported as latents only: it has no images to compare")
    distance = int(max_distance)
    if not 0 <= distance <= MAX_NEAR_DUPLICATE_DISTANCE:
        raise BankError(f"the distance must be between 0 and {MAX_NEAR_DUPLICATE_DISTANCE}, got {distance}")
    names = {e["sha256"]: e["source_name"] for e in store.image_entries(info.name)}
    pairs = sorted(store.near_duplicates(info.name, max_distance=distance), key=lambda p: p[2])
    rows = [[names.get(a, a[:12]), names.get(b, b[:12]), d] for a, b, d in pairs]
    if not rows:
        return Outcome(True, f"No near-duplicates in bank {info.name!r} (distance <= {distance}).", data=rows)
    return Outcome(True, f"{len(rows)} pair(s) of near-duplicates in bank {info.name!r} (distance <= {distance}); "
                         "remove the copies you do not want in the Images tab.", data=rows)


# ---------------------------------------------------------------------------------- CLIP curation
CURATION_COLUMNS = ("Image", "Score", "Closest concept", "Above threshold", "CLIP near-duplicate of")
MIN_CURATION_DUPLICATE_COSINE = 0.5
"""Lowest near-duplicate cosine the tab offers: CLIP embeddings of unrelated photos often sit near 0.5."""
CURATION_DECIMALS = 4

JudgeSource = Callable[[], ClipJudge]
"""Gives the CLIP judge for curation (the WebUI: the judge of its settings, loaded once)."""


def _check_curation_numbers(threshold: float, duplicate_cosine: float) -> tuple[float, float]:
    try:
        threshold, duplicate_cosine = float(threshold), float(duplicate_cosine)
    except (TypeError, ValueError):
        raise BankError(f"the threshold and the near-duplicate cosine must be numbers, got {threshold!r} and "
                        f"{duplicate_cosine!r}") from None
    if not -1.0 <= threshold <= 1.0:
        raise BankError(f"the threshold is a CLIP similarity between -1 and 1, got {threshold}")
    if not MIN_CURATION_DUPLICATE_COSINE <= duplicate_cosine <= 1.0:
        raise BankError(f"the near-duplicate cosine must lie between {MIN_CURATION_DUPLICATE_COSINE} and 1, "
                        f"got {duplicate_cosine}")
    return threshold, duplicate_cosine


def curation_rows(report: CurationReport, threshold: float = DEFAULT_CURATION_THRESHOLD,
                  duplicate_cosine: float = DEFAULT_CLIP_DUPLICATE_COSINE) -> list[list[Any]]:
    """The report as rows of ``CURATION_COLUMNS``, highest score first."""
    alike: dict[str, str] = {}
    for later, earlier, _ in report.near_duplicates(duplicate_cosine):
        alike.setdefault(later, earlier)  # the most alike earlier image (pairs come most alike first)
    ranked = sorted(report.scores, key=lambda s: -s.score)
    return [[s.name, round(s.score, CURATION_DECIMALS), s.closest(report.concepts), "yes" if s.score > threshold
             else "", alike.get(s.name, "")] for s in ranked]


def _curation_outcome(report: CurationReport, threshold: float, duplicate_cosine: float,
                      extra_skipped: Sequence[SkippedFile] = ()) -> Outcome:
    skipped = [*extra_skipped, *report.skipped]
    if not report.scores:
        raise _no_images(skipped, "nothing was scored")
    pairs = report.near_duplicates(duplicate_cosine)
    above = report.above(threshold)
    parts = [f"Scored {len(report.scores)} image(s) against {', '.join(report.concepts)!r} with {report.judge}: "
             f"{len(above)} above {threshold:g}"]
    if pairs:
        parts.append(f"{len(pairs)} CLIP near-duplicate pair(s) to check")
    if skipped:
        parts.append(f"{len(skipped)} file(s) skipped")
    details = [f"Skipped {s.name}: {s.reason}" for s in skipped]
    details += [f"CLIP near-duplicate: {a} looks like {b} (cosine {c:.3f})" for a, b, c in pairs]
    return Outcome(True, "; ".join(parts) + ".", _bounded(details), data=report)


@_answers
def curate_uploads(judge: JudgeSource, uploads: Sequence[str | os.PathLike], concepts: str, *,
                   threshold: float = DEFAULT_CURATION_THRESHOLD,
                   duplicate_cosine: float = DEFAULT_CLIP_DUPLICATE_COSINE,
                   limits: InputLimits | None = None) -> Outcome:
    """Score uploaded images and zips against text concepts (``data``: the CurationReport)."""
    threshold, duplicate_cosine = _check_curation_numbers(threshold, duplicate_cosine)
    if not uploads:
        raise BankError("choose some images (or a .zip of images) to score first")
    sources, skipped = collect_uploads(uploads, limits)
    if not sources:
        raise _no_images(skipped, "nothing was scored")
    return _curation_outcome(score_images(judge(), sources, concepts), threshold, duplicate_cosine, skipped)


@_answers
def curate_folder(judge: JudgeSource, user: User, folder: str, concepts: str, *, folder_import: bool,
                  recursive: bool = False, threshold: float = DEFAULT_CURATION_THRESHOLD,
                  duplicate_cosine: float = DEFAULT_CLIP_DUPLICATE_COSINE) -> Outcome:
    """Score a server folder's images (operators only, where the settings allow it)."""
    threshold, duplicate_cosine = _check_curation_numbers(threshold, duplicate_cosine)
    _check_folder_rights(user, folder_import, folder)
    base = Path(folder.strip())
    files, skipped = find_images(base, recursive=bool(recursive))
    sources = [(f.relative_to(base).as_posix(), f) for f in files]
    return _curation_outcome(score_images(judge(), sources, concepts), threshold, duplicate_cosine, skipped)


@_answers
def add_curated(store: BankStore, user: User, name: str | None, report: CurationReport | None,
                threshold: float = DEFAULT_CURATION_THRESHOLD, *, limits: InputLimits | None = None) -> Outcome:
    """Add the scored images above ``threshold`` to a bank the user may change."""
    info = _editable(store, user, name)
    if report is None or not report.scores:
        raise BankError("score some images first")
    threshold, _ = _check_curation_numbers(threshold, DEFAULT_CLIP_DUPLICATE_COSINE)
    chosen = report.above(threshold)
    if not chosen:
        best = max(s.score for s in report.scores)
        raise BankError(f"no scored image is above the threshold {threshold:g} (the best scores {best:.3f}); "
                        "lower the threshold or score other images")
    return _report_outcome("Added", store.add_images(info.name, [(s.name, s.source) for s in chosen],
                                                     limits=limits))
