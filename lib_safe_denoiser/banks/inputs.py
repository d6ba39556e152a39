"""Everything a user hands the bank store, checked before anything is written.

Bank names, descriptions, folders and image sources are validated here, and each image is read,
fully decoded and hashed ("staged"), so that ``BankStore`` only ever writes inputs that are known
to be good: one bad file in a folder of thousands leaves the store untouched.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lib_safe_denoiser.banks.encode import load_image
from lib_safe_denoiser.banks.files import is_windows_reserved
from lib_safe_denoiser.errors import BankError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""File types ``find_images`` (and so ``BankStore.add_folder``) picks up, case-insensitive."""

MAX_NAME_LEN = 64
MAX_DESCRIPTION_LEN = 2000
MAX_SOURCE_NAME_LEN = 255

ImageInput = Any
"""``str | os.PathLike | bytes | PIL.Image.Image | tuple[source_name, str | os.PathLike | bytes]``."""

_NAME_RE = re.compile(r"^[A-Za-z0-9 _.\-]+$")
_FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


@dataclass(frozen=True)
class StagedImage:
    """An image validated and hashed, not yet stored: ``path`` or ``data`` holds its bytes.

    Path sources keep only the path, so staging a large folder does not hold every file in memory;
    the store re-hashes while copying and refuses a file that changed in between.
    """

    sha256: str
    ext: str
    source_name: str
    path: Path | None = None
    data: bytes | None = None


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


def clean_text(value: str, max_len: int, what: str) -> str:
    """Free text for the manifest: control characters (but newline and tab) dropped, stripped, bounded."""
    if not isinstance(value, str):
        raise BankError(f"the {what} must be text, got {type(value).__name__}")
    value = "".join(c for c in value if c in "\n\t" or ord(c) >= 32).strip()
    if len(value) > max_len:
        raise BankError(f"the {what} is {len(value)} characters long; keep it to {max_len}")
    return value


def find_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``) in ``folder``, sorted; ``BankError`` if there are none.

    Sorted so a bank built from a folder has a reproducible order; hidden files are skipped.
    """
    base = Path(folder)
    if not base.is_dir():
        raise BankError(f"folder not found: {base}")
    candidates = base.rglob("*") if recursive else base.iterdir()
    files = sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
    if not files:
        kinds = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        hint = "" if recursive else " (sub-folders are not searched; use recursive)"
        raise BankError(f"no images ({kinds}) found in {base}{hint}")
    return files


def stage_all(images: Iterable[ImageInput]) -> list[StagedImage]:
    """Stage every source, dropping duplicates (same bytes) but the first; ``BankError`` if empty."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        images = [images]
    staged: list[StagedImage] = []
    seen: set[str] = set()
    for index, source in enumerate(images):
        s = stage_image(source, index)
        if s.sha256 not in seen:
            seen.add(s.sha256)
            staged.append(s)
    if not staged:
        raise BankError("no images given; a bank needs at least one image")
    return staged


def stage_image(source: ImageInput, index: int = 0) -> StagedImage:
    """Read, fully decode and hash one image source; ``BankError`` naming it if it is bad.

    The hash is over the file's bytes as given (images are stored unchanged); in-memory PIL images
    are stored as PNG.
    """
    path: Path | None = None
    source_name: str | None = None
    if isinstance(source, tuple) and len(source) == 2:
        source_name, source = str(source[0]), source[1]
    if isinstance(source, Image.Image):
        buf = io.BytesIO()
        load_image(source).save(buf, format="PNG")
        data = buf.getvalue()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BankError(f"image not found: {path}") from None
        except OSError as e:
            raise BankError(f"cannot read image {path}: {e}") from e
        source_name = source_name or path.name
    else:
        kind = type(source).__name__
        raise BankError(f"image #{index + 1}: expected a file path or image bytes, got {kind}")
    name = str(path) if path is not None else (source_name or f"image #{index + 1}")
    try:
        load_image(data, name=name)
        fmt = Image.open(io.BytesIO(data)).format or ""
    except BankError:
        raise
    except Exception as e:  # PIL raises odd types on odd files
        raise BankError(f"not a readable image: {name} ({e})") from e
    sha = hashlib.sha256(data).hexdigest()
    ext = _FORMAT_EXT.get(fmt.upper(), re.sub(r"[^a-z0-9]", "", fmt.lower())[:5] or "img")
    fallback = f"{sha[:10]}.{ext}"
    source_name = clean_text(source_name or fallback, MAX_SOURCE_NAME_LEN, "image name") or fallback
    return StagedImage(sha, ext, source_name, path=path, data=None if path is not None else data)
