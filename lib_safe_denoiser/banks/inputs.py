"""Everything a user hands the bank store, checked before anything is written.

Bank names, descriptions, tags, folders, zip uploads and image sources are validated here, and
each image is read, fully decoded and hashed ("staged"), so that ``BankStore`` only ever writes
inputs that are known to be good. In a batch, bad files are reported by name and reason
(``SkippedFile``) and the good ones proceed: one broken file among thousands costs one line in a
report, not the whole upload.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lib_safe_denoiser.banks.files import is_windows_reserved
from lib_safe_denoiser.banks.images import (
    MAX_PIXELS,
    BadImageError,
    decode_image,
    load_image,
    perceptual_hash,
    read_source_bytes,
)
from lib_safe_denoiser.errors import BankError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File types picked up from folders and zip archives, case-insensitive."""

MAX_NAME_LEN = 64
MAX_DESCRIPTION_LEN = 2000
MAX_SOURCE_NAME_LEN = 255
MAX_TAGS = 20
MAX_TAG_LEN = 32

MIB = 1 << 20
ZIP_RATIO_FLOOR_BYTES = MIB
"""Zip members smaller than this are never called bombs: a small flat BMP compresses 1000:1 honestly."""

ImageInput = Any
"""``str | os.PathLike | bytes | PIL.Image.Image | tuple[source_name, str | os.PathLike | bytes]``."""

_NAME_RE = re.compile(r"^[A-Za-z0-9 _.\-]+$")
_TAG_RE = re.compile(r"^[\w .:+#&()'\-]+$")  # \w: letters and digits of any script, and _
_FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}
_OS_JUNK = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
"""Files and folders operating systems add on their own (dot-files are ignored too): never reported."""


@dataclass(frozen=True)
class SkippedFile:
    """An input left out of a batch, and why, in words meant for the person who uploaded it."""

    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class InputLimits:
    """Bounds on one upload, so a careless or hostile request cannot exhaust memory or disk.

    ``max_files`` counts inputs in the order given (later ones are skipped, naming the limit);
    the byte limits are on files as given (``max_total_bytes`` over the images staged);
    ``max_zip_members`` and ``max_zip_ratio`` guard zip archives (entries of any kind, and
    uncompressed:compressed size of members of at least ``ZIP_RATIO_FLOOR_BYTES``).
    """

    max_files: int = 1000
    max_file_bytes: int = 50 * MIB
    max_total_bytes: int = 1024 * MIB
    max_pixels: int | None = MAX_PIXELS
    max_zip_members: int = 10_000
    max_zip_ratio: float = 200.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_file_bytes", "max_total_bytes", "max_zip_members", "max_zip_ratio"):
            if not getattr(self, name) > 0:
                raise BankError(f"input limit {name} must be positive, got {getattr(self, name)!r}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise BankError(f"input limit max_pixels must be positive or None, got {self.max_pixels!r}")


@dataclass(frozen=True)
class StagedImage:
    """An image validated and hashed, not yet stored: ``path`` or ``data`` holds its bytes.

    Path sources keep only the path, so staging a large folder does not hold every file in memory;
    the store re-hashes while copying and refuses a file that changed in between. ``phash`` is the
    64-bit ``perceptual_hash`` of the decoded picture, for near-duplicate hints.
    """

    sha256: str
    ext: str
    source_name: str
    phash: int
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class StageResult:
    """What ``stage_many`` made of a batch: images to store, dropped duplicates, skipped inputs."""

    staged: list[StagedImage] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    """Source names of inputs whose bytes equal an earlier input's (the first one is kept)."""
    skipped: list[SkippedFile] = field(default_factory=list)


def validate_bank_name(name: str) -> str:
    """Return ``name`` if it can safely be a directory name on every OS; ``BankError`` otherwise.

    Bank names end up as a path component and in infotext, so only ASCII letters, digits,
    space, ``_``, ``-`` and ``.`` are allowed; no leading dot (hidden files, ``..``), no trailing
    dot or space (Windows strips them), no Windows device names.
    """
    if not isinstance(name, str):
        raise BankError(f"a bank name must be text, got {type(name).__name__}")
    shown = repr(name if len(name) <= 80 else name[:80] + "...")
    if not name.strip():
        raise BankError("the bank name is empty; give it a name such as 'nudity-v1'")
    if len(name) > MAX_NAME_LEN:
        raise BankError(f"the bank name {shown} is {len(name)} characters long; keep it to {MAX_NAME_LEN}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BankError(f"the bank name {shown} contains control characters; use letters, digits, space, _-.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BankError(f"the bank name {shown} looks like a path; use a plain name such as 'nudity-v1'")
    if not _NAME_RE.match(name):
        raise BankError(f"the bank name {shown} may only contain ASCII letters, digits, space, _ - and .")
    if name.startswith("."):
        raise BankError(f"the bank name {shown} must not start with '.'")
    if name != name.strip() or name.endswith("."):
        raise BankError(f"the bank name {shown} must not start or end with a space or end with '.'")
    if is_windows_reserved(name):
        raise BankError(f"the bank name {shown} is reserved on Windows; pick another")
    return name


def validate_tags(tags: str | Iterable[str] | None) -> tuple[str, ...]:
    """Short labels for filtering banks: a list, or one comma-separated text (as a UI text box gives).

    Each tag is stripped and its inner whitespace collapsed; empty ones are dropped and repeats
    (ignoring case) removed, the first spelling kept. Tags may hold letters and digits of any
    script, space and ``_ - . : + # & ( ) '``: more than bank names, which must be portable file
    names, but no commas (the separator) or control characters. ``BankError`` names the bad tag.
    """
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = tags.split(",")
    elif isinstance(tags, bytes) or not isinstance(tags, Iterable):
        raise BankError(f"tags must be a list of texts or one comma-separated text, got {type(tags).__name__}")
    out: list[str] = []
    seen: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str):
            raise BankError(f"each tag must be text, got {type(tag).__name__}")
        tag = " ".join(tag.split())
        if not tag:
            continue
        if len(tag) > MAX_TAG_LEN:
            raise BankError(f"the tag {tag[:40]!r} is {len(tag)} characters long; keep tags to {MAX_TAG_LEN}")
        if not _TAG_RE.match(tag):
            raise BankError(
                f"the tag {tag!r} may only contain letters, digits, space and _ - . : + # & ( ) '"
            )
        if tag.casefold() not in seen:
            seen.add(tag.casefold())
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise BankError(f"{len(out)} tags given; a bank can have at most {MAX_TAGS}")
    return tuple(out)


def clean_text(value: str, max_len: int, what: str) -> str:
    """Free text for the manifest: control characters (but newline and tab) dropped, stripped, bounded."""
    if not isinstance(value, str):
        raise BankError(f"the {what} must be text, got {type(value).__name__}")
    value = "".join(c for c in value if c in "\n\t" or ord(c) >= 32).strip()
    if len(value) > max_len:
        raise BankError(f"the {what} is {len(value)} characters long; keep it to {max_len}")
    return value


def _image_kinds() -> str:
    return "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def _not_an_image_type(name: str) -> SkippedFile:
    ext = Path(name).suffix.lower() or "no extension"
    return SkippedFile(name, f"not an image file type ({ext}); images are {_image_kinds()}")


def _ignored(parts: Iterable[str]) -> bool:
    """Hidden files and folders, and what operating systems add on their own."""
    return any(p.startswith(".") or p.lower() in _OS_JUNK for p in parts)


def find_images(folder: str | os.PathLike, *, recursive: bool = False) -> tuple[list[Path], list[SkippedFile]]:
    """Image files (``IMAGE_EXTENSIONS``) in ``folder``, and the other files, skipped with a reason.

    Files are sorted by their path relative to ``folder`` (``/``-separated), so a bank built from a
    folder has the same order on every OS; skipped names are those relative paths. Hidden files
    and OS clutter are ignored. ``BankError`` if the folder is missing or holds no image file.
    """
    base = Path(folder)
    if not base.is_dir():
        raise BankError(f"folder not found: {base}")
    files: list[tuple[str, Path]] = []
    skipped: list[SkippedFile] = []
    for p in base.rglob("*") if recursive else base.iterdir():
        rel = p.relative_to(base).as_posix()
        if _ignored(rel.split("/")) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append((rel, p))
        else:
            skipped.append(_not_an_image_type(rel))
    if not files:
        hint = "" if recursive else " (sub-folders are not searched; use recursive)"
        others = f"; {len(skipped)} other file(s), e.g. {skipped[0].name}" if skipped else ""
        raise BankError(f"no images ({_image_kinds()}) found in {base}{hint}{others}")
    files.sort(key=lambda item: item[0])
    skipped.sort(key=lambda s: s.name)
    return [p for _, p in files], skipped


def images_from_zip(
    data: bytes | str | os.PathLike, limits: InputLimits | None = None
) -> tuple[list[tuple[str, bytes]], list[SkippedFile]]:
    """The image members of a zip upload as ``(name, bytes)``, sorted by name, and what was skipped.

    Names are the members' ``/``-separated paths inside the archive (nested folders kept).
    Folders, hidden files and ``__MACOSX`` clutter are ignored; members with an absolute or
    ``..`` path, non-image types, encrypted or damaged data, sizes over ``limits`` or a
    compression ratio over ``limits.max_zip_ratio`` (a zip bomb) are skipped with the reason.
    Nothing is extracted to disk. ``BankError`` if the archive itself is unreadable or has more
    than ``limits.max_zip_members`` entries.
    """
    limits = limits or InputLimits()
    label = Path(data).name if isinstance(data, (str, os.PathLike)) else "the uploaded zip"
    try:
        archive = zipfile.ZipFile(data if isinstance(data, (str, os.PathLike)) else io.BytesIO(data))
    except FileNotFoundError:
        raise BankError(f"zip file not found: {data}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise BankError(f"{label} is not a readable zip archive ({e}); zip the images again") from e
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_zip_members:
            raise BankError(
                f"{label} has {len(infos)} entries; the limit is {limits.max_zip_members}: upload it in parts"
            )
        skipped: list[SkippedFile] = []
        candidates: list[tuple[str, zipfile.ZipInfo]] = []
        for info in infos:
            if info.is_dir():
                continue
            name, problem = _member_name(info.filename)
            if problem:
                skipped.append(SkippedFile(info.filename, problem))
            elif name and not _ignored(name.split("/")):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((name, info))
                else:
                    skipped.append(_not_an_image_type(name))
        candidates.sort(key=lambda item: item[0])
        images: list[tuple[str, bytes]] = []
        total = 0
        for name, info in candidates:
            problem = _member_problem(info, len(images), total, limits)
            if problem is None:
                try:
                    content = archive.read(info)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                    problem = f"damaged in the archive ({e}); zip it again"
                else:
                    total += len(content)
                    images.append((name, content))
            if problem is not None:
                skipped.append(SkippedFile(name, problem))
    return images, skipped


def _member_name(raw: str) -> tuple[str, str | None]:
    """A member's safe relative ``/`` path, or a reason it is unsafe (zip-slip, absolute)."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "", "unsafe path in the archive (absolute); zip the images with relative paths"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "", "unsafe path in the archive ('..' points outside it); zip the images again"
    return "/".join(parts), None


def _member_problem(info: zipfile.ZipInfo, count: int, total: int, limits: InputLimits) -> str | None:
    """Why a zip member must not be read (checked on the declared sizes, which zipfile enforces)."""
    if count >= limits.max_files:
        return f"over the limit of {limits.max_files} files per upload"
    if info.flag_bits & 0x1:
        return "encrypted (password-protected); zip it again without a password"
    if info.file_size > limits.max_file_bytes:
        return f"{_mib(info.file_size)} uncompressed; the limit is {_mib(limits.max_file_bytes)} per file"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size >= ZIP_RATIO_FLOOR_BYTES and ratio > limits.max_zip_ratio:
        return (
            f"compresses {ratio:.0f}:1 ({_mib(info.file_size)} from {info.compress_size} bytes), "
            f"over the {limits.max_zip_ratio:.0f}:1 limit: looks like a zip bomb"
        )
    if total + info.file_size > limits.max_total_bytes:
        return f"over the limit of {_mib(limits.max_total_bytes)} per upload in total"
    return None


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.1f} MiB"


def source_label(source: ImageInput, index: int) -> str:
    """How an input is named in reports: its given name, its path, or its position."""
    if isinstance(source, tuple) and len(source) == 2:
        return str(source[0])
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"image #{index + 1}"


def stage_many(images: Iterable[ImageInput] | ImageInput, limits: InputLimits | None = None) -> StageResult:
    """Stage every source; bad ones are skipped with a reason, the good ones proceed.

    Inputs after the first ``limits.max_files`` are skipped unread, as are images that would take
    the staged total over ``limits.max_total_bytes``. Inputs with the same bytes as an earlier one
    are dropped and listed in ``duplicates`` (the first is kept). An empty result is not an error
    here: the caller knows whether that is fatal.
    """
    limits = limits or InputLimits()
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        images = [images]
    result = StageResult()
    seen: set[str] = set()
    total = 0
    for index, source in enumerate(images):
        if index >= limits.max_files:
            result.skipped.append(
                SkippedFile(source_label(source, index), f"over the limit of {limits.max_files} files per upload")
            )
            continue
        try:
            staged, n_bytes = stage_image(source, index, limits)
        except BadImageError as e:
            result.skipped.append(SkippedFile(e.name, e.reason))
            continue
        if staged.sha256 in seen:
            result.duplicates.append(staged.source_name)
        elif total + n_bytes > limits.max_total_bytes:
            result.skipped.append(
                SkippedFile(
                    source_label(source, index), f"over the limit of {_mib(limits.max_total_bytes)} per upload in total"
                )
            )
        else:
            seen.add(staged.sha256)
            total += n_bytes
            result.staged.append(staged)
    return result


def stage_image(source: ImageInput, index: int = 0, limits: InputLimits | None = None) -> tuple[StagedImage, int]:
    """Read, fully decode and hash one source; ``BadImageError`` naming it if it is bad or over ``limits``.

    Returns the staged image and the size of the file the store will write. The hash is over the
    bytes as given (images are stored unchanged); in-memory PIL images are stored as PNG.
    """
    limits = limits or InputLimits()
    label = source_label(source, index)
    given_name: str | None = None
    if isinstance(source, tuple) and len(source) == 2:
        given_name, source = str(source[0]), source[1]
    path: Path | None = None
    if isinstance(source, Image.Image):
        img = load_image(source, name=label, max_pixels=limits.max_pixels)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, fmt = buf.getvalue(), "PNG"
        _check_file_bytes(label, len(data), limits)
    elif isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            given_name = given_name or path.name
            _check_file_bytes(label, _file_size(path), limits)
        data = read_source_bytes(source, label)
        _check_file_bytes(label, len(data), limits)
        img, fmt = decode_image(data, name=label, max_pixels=limits.max_pixels)
    else:
        raise BadImageError(label, f"expected a file path or image bytes, got {type(source).__name__}")
    sha = hashlib.sha256(data).hexdigest()
    ext = _FORMAT_EXT.get(fmt, "img")  # in-memory images are "PNG"; decode_image opens no other formats
    source_name = _clean_source_name(given_name or "") or f"{sha[:10]}.{ext}"
    staged = StagedImage(sha, ext, source_name, perceptual_hash(img), path=path, data=None if path else data)
    return staged, len(data)


def _clean_source_name(name: str) -> str:
    """A name for the manifest: control characters dropped; an over-long one keeps its end (the
    file name and extension are what people recognise)."""
    name = "".join(c for c in name if ord(c) >= 32 and ord(c) != 127).strip()
    return name if len(name) <= MAX_SOURCE_NAME_LEN else "..." + name[-(MAX_SOURCE_NAME_LEN - 3) :]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reading it reports what is wrong, in the same words as for any image


def _check_file_bytes(label: str, n_bytes: int, limits: InputLimits) -> None:
    if n_bytes > limits.max_file_bytes:
        raise BadImageError(label, f"file is {_mib(n_bytes)}; the limit is {_mib(limits.max_file_bytes)} per file")
