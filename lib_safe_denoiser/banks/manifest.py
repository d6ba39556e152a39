"""A bank's manifest: what ``banks/<name>/manifest.json`` holds, parsed and written in one place.

Version 2 adds owner, tags, resize policy, ``has_images`` and per-image ``added``/``phash`` to
version 1 (name, description, created, updated, content_hash, images). Version 1 files are read
as they are (shared, untagged, "crop", the version 1 encoder's only policy) and become version 2
on their next write. The directory name, not the ``name`` field, is the bank's name: a rename
moves the directory first (the commit point) and rewrites the field after.

The perceptual hash is stored per image so a near-duplicate check never decodes existing images;
it is written as 16 hex digits because JSON readers in browsers lose integers above 2**53.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lib_safe_denoiser.banks.images import DEFAULT_RESIZE, validate_resize
from lib_safe_denoiser.banks.inputs import MAX_DESCRIPTION_LEN, clean_text, validate_tags
from lib_safe_denoiser.errors import BankError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_OWNER_LEN = 255

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
POOL_FILE_RE = re.compile(r"^([0-9a-f]{64})\.([a-z0-9]{1,5})$")
_PHASH_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class BankInfo:
    """What a front-end needs to show or record about a bank."""

    name: str
    content_hash: str
    n_images: int
    created: str
    description: str = ""
    updated: str = ""
    owner: str | None = None
    """The user who owns the bank; None for a bank shared by everyone."""
    tags: tuple[str, ...] = ()
    resize: str = DEFAULT_RESIZE
    """How images are fitted to a generation's aspect ratio before encoding (images.RESIZE_POLICIES)."""
    has_images: bool = True
    """False for a bank imported with latents only: it serves the cached sizes it carries, nothing else."""

    @property
    def short_hash(self) -> str:
        """First 10 hex chars: enough to tell banks apart in infotext, short enough to read."""
        return self.content_hash[:10]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (REST responses, ``bank list --json``)."""
        return {**dataclasses.asdict(self), "tags": list(self.tags), "short_hash": self.short_hash}


@dataclass(frozen=True)
class ImageEntry:
    """One image of a bank. ``file`` is its pool file name, "" in a latents-only bank."""

    sha256: str
    file: str
    source_name: str
    added: str
    phash: int | None = None

    def as_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "file": self.file, "source_name": self.source_name, "added": self.added}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = self.as_dict()
        if self.phash is not None:
            data["phash"] = f"{self.phash:016x}"
        return data


@dataclass(frozen=True)
class Manifest:
    info: BankInfo
    images: tuple[ImageEntry, ...]

    def to_json(self, **extra: Any) -> bytes:
        """The manifest file's bytes; ``extra`` keys are added (an archive's format marker, latents list)."""
        i = self.info
        data = {
            "version": MANIFEST_VERSION,
            "name": i.name,
            "description": i.description,
            "owner": i.owner,
            "tags": list(i.tags),
            "created": i.created,
            "updated": i.updated,
            "resize": i.resize,
            "has_images": i.has_images,
            "content_hash": i.content_hash,
            "images": [e.to_json() for e in self.images],
            **extra,
        }
        return json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8")

    def by_sha(self) -> dict[str, ImageEntry]:
        return {e.sha256: e for e in self.images}


def content_hash_of(image_hashes: Iterable[str]) -> str:
    """sha256 over the sorted, de-duplicated image hashes, one per line: order-independent."""
    joined = "\n".join(sorted(set(image_hashes)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def clean_owner(owner: str | None) -> str | None:
    """An owner name for the manifest; None (or "") means a shared bank."""
    if owner is None:
        return None
    owner = clean_text(owner, MAX_OWNER_LEN, "owner")
    return owner or None


def build_manifest(
    name: str,
    images: Iterable[ImageEntry],
    *,
    created: str,
    updated: str,
    description: str = "",
    owner: str | None = None,
    tags: Iterable[str] = (),
    resize: str = DEFAULT_RESIZE,
    has_images: bool = True,
) -> Manifest:
    """A manifest whose content hash and count follow from ``images`` (callers never set them by hand)."""
    entries = tuple(images)
    info = BankInfo(
        name=name,
        content_hash=content_hash_of(e.sha256 for e in entries),
        n_images=len(entries),
        created=created,
        description=description,
        updated=updated,
        owner=owner,
        tags=tuple(tags),
        resize=resize,
        has_images=has_images,
    )
    return Manifest(info, entries)


def parse_manifest(name: str, data: Any) -> Manifest:
    """Check and read a manifest's JSON data (version 1 or 2) as bank ``name``.

    Raises ``ValueError`` saying what is damaged (the caller adds where), or ``BankError`` for a
    manifest written by a newer version of the extension.
    """
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    version = data.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise BankError(
            f"bank {name!r} was written by a newer version of the extension (manifest version {version!r}); "
            "update the extension to use it"
        )
    created = str(data.get("created", ""))
    has_images = data.get("has_images", True)
    if not isinstance(has_images, bool):
        raise ValueError("'has_images' is not true or false")
    images = data["images"]
    if not isinstance(images, list) or not images:
        raise ValueError("it lists no images")
    entries = tuple(_parse_entry(item, has_images, created) for item in images)
    if len({e.sha256 for e in entries}) != len(entries):
        raise ValueError("it lists an image twice")
    try:
        manifest = build_manifest(
            name,
            entries,
            created=created,
            updated=str(data.get("updated", created)),
            description=clean_text(str(data.get("description", "")), MAX_DESCRIPTION_LEN, "description"),
            owner=clean_owner(data.get("owner")),
            tags=validate_tags(data.get("tags") or ()),
            resize=validate_resize(data.get("resize", DEFAULT_RESIZE)),
            has_images=has_images,
        )
    except BankError as e:  # a field no front-end could have written: damage, reported as such
        raise ValueError(str(e)) from e
    if data.get("content_hash") != manifest.info.content_hash:
        raise ValueError("its content hash does not match its images")
    return manifest


def _parse_entry(item: Any, has_images: bool, created: str) -> ImageEntry:
    if not isinstance(item, dict):
        raise ValueError(f"bad image record {item!r}")
    sha, file = str(item["sha256"]), str(item.get("file") or "")
    if not SHA_RE.match(sha):
        raise ValueError(f"bad image hash {sha!r}")
    if has_images:
        m = POOL_FILE_RE.match(file)
        if m is None or m.group(1) != sha:
            raise ValueError(f"bad image file name {file!r}")
    elif file:
        raise ValueError(f"a latents-only bank lists an image file ({file!r})")
    phash = item.get("phash")
    if phash is not None and not (isinstance(phash, str) and _PHASH_RE.match(phash)):
        raise ValueError(f"bad perceptual hash {phash!r}")
    return ImageEntry(
        sha256=sha,
        file=file,
        source_name=str(item.get("source_name") or file or sha[:10]),
        added=str(item.get("added") or created),
        phash=None if phash is None else int(phash, 16),
    )
