"""Portable bank archives: one .zip file a user can move to another WebUI.

Contents::

    manifest.json                                the bank's manifest (manifest.py) plus "archive"
                                                 (format marker, version, latents mode) and "latents"
    images/<sha256>.<ext>                        the images, as stored (absent with latents="only")
    latents/<vae dir>/<h>x<w>.<resize>.safetensors   latent files (latents="include" or "only")

``latents="only"`` shares a bank without its images (smaller, and the images need not leave the
machine): the manifest keeps every image's hash, so the imported bank has the same content hash,
and it serves exactly the latents it carries.

An archive is untrusted input. Import checks every member name (only the names above, so nothing
can land outside the store), declared sizes and compression ratios (zip bombs), each image's sha256
against the manifest and that it decodes, and each latent file's metadata, shape and values (in a
private staging folder in the store), before the manifest, the commit point, is written. Latents for
the shared cache move into it only after the commit, when ``gc`` sees their content as referenced.
The owner recorded in an archive is not imported: the importing user's ``owner`` argument decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lib_safe_denoiser.banks.files import TEMP_PREFIX, atomic_writer
from lib_safe_denoiser.banks.images import validate_resize
from lib_safe_denoiser.banks.inputs import InputLimits, stage_many, validate_bank_name
from lib_safe_denoiser.banks.latent_cache import (
    LATENT_SUFFIX,
    LatentKey,
    check_latent_file,
    check_latent_hw,
    vae_dir,
)
from lib_safe_denoiser.banks.manifest import (
    MANIFEST_FILE,
    BankInfo,
    ImageEntry,
    Manifest,
    build_manifest,
    clean_owner,
    now,
    parse_manifest,
)
from lib_safe_denoiser.errors import BankError

if TYPE_CHECKING:
    from lib_safe_denoiser.banks.store import BankStore

logger = logging.getLogger(__name__)

ARCHIVE_FORMAT = "sd-webui-safe-denoiser bank"
ARCHIVE_VERSION = 1
ARCHIVE_SUFFIX = ".zip"
LATENT_MODES = ("none", "include", "only")
MAX_MEMBERS = 200_000
MAX_MANIFEST_BYTES = 64 << 20
MAX_LATENT_FILE_BYTES = 16 << 30
MAX_TOTAL_BYTES = 64 << 30
MAX_RATIO = 100
"""Largest uncompressed/compressed size ratio accepted for a member above RATIO_FLOOR_BYTES."""
RATIO_FLOOR_BYTES = 1 << 20
_CHUNK = 1 << 20

_IMAGE_MEMBER_RE = re.compile(r"^images/([0-9a-f]{64})\.([a-z0-9]{1,5})$")
_LATENT_MEMBER_RE = re.compile(r"^latents/([A-Za-z0-9_-][A-Za-z0-9._-]{0,63})/([0-9]{1,5})x([0-9]{1,5})\.([a-z]{1,16})"
                               + re.escape(LATENT_SUFFIX) + "$")


# ---- export ------------------------------------------------------------------------------------
def export_bank(store: BankStore, name: str, dest: Path, *, latents: str = "include") -> Path:
    """Write bank ``name`` to ``dest`` (a .zip file, or a folder to put ``<name>.zip`` in); returns the file.

    ``latents``: "none" (images only), "include" (images and every sound cached latent file),
    "only" (latent files and image hashes, no images). The file appears complete or not at all.
    The bank's lock is held throughout, so no image can be removed (and swept) halfway.
    """
    if latents not in LATENT_MODES:
        raise BankError(f"latents must be one of {', '.join(map(repr, LATENT_MODES))}, got {latents!r}")
    name = validate_bank_name(name)
    if dest.is_dir():
        dest = dest / f"{name}{ARCHIVE_SUFFIX}"
    with store.locks.banks(name):
        manifest = store.read_manifest(name)
        info = manifest.info
        if not info.has_images and latents != "only":
            raise BankError(f"bank {name!r} has no images (it was imported with latents only); "
                            "export it with latents='only' (--latents only)")
        files: list[tuple[str, Path, LatentKey]] = []
        if latents != "none":
            for path, entry in store.latent_dir_for(info).entries(info.content_hash):
                key = LatentKey(info.content_hash, entry.vae_id, entry.resize, entry.latent_hw)
                try:
                    check_latent_file(path, key, info.n_images)
                except (BankError, OSError):  # a damaged cache file is not worth shipping
                    continue
                files.append((_latent_member(key), path, key))
        if latents == "only" and not files:
            raise BankError(f"bank {name!r} has no cached latents to export; generate an image with it first "
                            "(that encodes and caches them), or export it with its images")
        images = [] if latents == "only" else store.image_paths(name)
        if latents == "only":
            entries = [dataclasses.replace(e, file="") for e in manifest.images]
            manifest = Manifest(dataclasses.replace(info, has_images=False), tuple(entries))
        manifest = Manifest(dataclasses.replace(manifest.info, owner=None), manifest.images)
        extra = {
            "archive": {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "latents": latents},
            "latents": [{"file": member, "vae_id": key.vae_id, "resize": key.resize, "latent_hw": list(key.latent_hw)}
                        for member, _, key in files],
        }
        try:
            with atomic_writer(dest) as out, zipfile.ZipFile(out, "w", allowZip64=True) as zf:
                zf.writestr(MANIFEST_FILE, manifest.to_json(**extra), compress_type=zipfile.ZIP_DEFLATED)
                for path in images:  # already compressed (png/jpg/webp): stored as is
                    zf.write(path, f"images/{path.name}", compress_type=zipfile.ZIP_STORED)
                for member, path, _ in files:
                    zf.write(path, member, compress_type=zipfile.ZIP_STORED)
        except OSError as e:
            raise BankError(f"cannot write {dest}: {e}") from e
    return dest


def _latent_member(key: LatentKey) -> str:
    h, w = key.latent_hw
    return f"latents/{vae_dir(key.vae_id)}/{h}x{w}.{key.resize}{LATENT_SUFFIX}"


# ---- import ------------------------------------------------------------------------------------
def import_bank(
    store: BankStore,
    src: str | os.PathLike | bytes,
    *,
    name: str | None = None,
    owner: str | None = None,
    overwrite: bool = False,
) -> BankInfo:
    """Add the bank in archive ``src`` (a path or the file's bytes) as ``name`` (default: its own name).

    Everything is checked before the manifest is written; a name clash is refused unless
    ``overwrite``.
    """
    owner = clean_owner(owner)
    with _open_zip(src) as zf:
        members = _check_members(zf)
        data = _read_manifest_json(zf, members)
        target = validate_bank_name(name if name is not None else str(data.get("name", "")))
        try:
            manifest = parse_manifest(target, data)
        except (ValueError, KeyError, TypeError) as e:
            raise BankError(f"the archive's manifest is damaged: {e}") from None
        info = manifest.info
        latents = _latent_list(data, info.content_hash)
        _check_member_set(members, manifest, latents)
        if not info.has_images and not latents:
            raise BankError("the archive holds neither images nor latents; export the bank again")
        store.check_free(target, overwrite)  # fail fast, before the slow checks
        entries = _check_images(zf, members, manifest) if info.has_images else list(manifest.images)
        imported = build_manifest(
            target, entries, created=info.created, updated=now(), description=info.description, owner=owner,
            tags=info.tags, resize=info.resize, has_images=info.has_images,
        )
        with _staging_dir(store.root) as staging:
            staged = []
            for i, (member, key) in enumerate(latents):  # checked in a private folder first
                path = staging / f"{i}{LATENT_SUFFIX}"
                with atomic_writer(path, verify=lambda p, k=key: check_latent_file(p, k, info.n_images)) as out:
                    _copy_member(zf, members[member], out)
                staged.append((path, key))
            with store.locks.banks(target):
                store.check_free(target, overwrite)
                carried = []
                if not info.has_images:  # the bank's own data: in place before the commit
                    carried = [_move(path, store.carried_latents(target).path(key)) for path, key in staged]
                for e in imported.images if info.has_images else ():
                    store.put_pool_bytes(e.file, e.sha256, _read_image(zf, members, e))

                def restore(e: ImageEntry) -> None:
                    store.put_pool_bytes(e.file, e.sha256, _read_image(zf, members, e))

                store.commit(imported, imported.images, restore, carried=carried)
            if info.has_images:  # a cache: written once its content hash is referenced, so gc keeps it
                for path, key in staged:
                    try:
                        _move(path, store.cache.path(key))
                    except OSError as e:  # the bank is imported; these latents will be encoded again
                        logger.warning("safe denoiser: cannot cache imported latents %s: %s", key.relpath(), e)
                store.cache.evict()
    return imported.info


@contextlib.contextmanager
def _staging_dir(root: Path) -> Iterator[Path]:
    """A private folder inside the store (same file system: files move out with a rename); a temp
    name, so ``gc`` sweeps it if this process dies."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "import-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _move(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    return dst


@contextlib.contextmanager
def _open_zip(src: str | os.PathLike | bytes) -> Iterator[zipfile.ZipFile]:
    shown = "the uploaded file" if isinstance(src, (bytes, bytearray)) else str(src)
    try:
        handle: IO[bytes] | str = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else os.fspath(src)
        zf = zipfile.ZipFile(handle)
    except FileNotFoundError:
        raise BankError(f"archive not found: {shown}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise BankError(f"{shown} is not a bank archive (not a readable zip file: {e})") from None
    with zf:
        try:
            yield zf
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
            raise BankError(f"{shown} is damaged ({e}); export the bank again") from None


def _check_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Every member must have an expected name, a bounded size and a sane compression ratio."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BankError(f"the archive has {len(infos)} members; a bank archive has at most {MAX_MEMBERS}")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for i in infos:
        if i.is_dir() and ".." not in i.filename.split("/") and not i.filename.startswith("/"):
            continue  # folder entries some zip tools add; nothing is ever extracted by name
        kind = _member_kind(i.filename)
        if kind is None:
            raise BankError(f"the archive has an unexpected or unsafe member {i.filename[:200]!r}; "
                            "it is not a bank archive made by this extension")
        if i.filename in members:
            raise BankError(f"the archive lists {i.filename!r} twice; it was tampered with")
        if i.flag_bits & 0x1:
            raise BankError(f"the archive member {i.filename!r} is encrypted; bank archives are not")
        limit = {"manifest": MAX_MANIFEST_BYTES, "image": InputLimits().max_file_bytes,
                 "latents": MAX_LATENT_FILE_BYTES}[kind]
        if i.file_size > limit:
            raise BankError(f"the archive member {i.filename!r} is {i.file_size} bytes; the limit is {limit}")
        if i.file_size > RATIO_FLOOR_BYTES and i.file_size > MAX_RATIO * max(i.compress_size, 1):
            raise BankError(f"the archive member {i.filename!r} expands {i.file_size // max(i.compress_size, 1)}"
                            " times; refusing a possible zip bomb")
        total += i.file_size
        members[i.filename] = i
    if total > MAX_TOTAL_BYTES:
        raise BankError(f"the archive expands to {total} bytes; the limit is {MAX_TOTAL_BYTES}")
    if MANIFEST_FILE not in members:
        raise BankError(f"not a bank archive: it has no {MANIFEST_FILE}")
    return members


def _member_kind(name: str) -> str | None:
    if name == MANIFEST_FILE:
        return "manifest"
    if _IMAGE_MEMBER_RE.match(name):
        return "image"
    if _LATENT_MEMBER_RE.match(name):
        return "latents"
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    buf = io.BytesIO()
    _copy_member(zf, info, buf)
    return buf.getvalue()


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes]) -> None:
    """Copy a member, never more than its checked declared size (zipfile also checks its CRC)."""
    left = info.file_size
    with zf.open(info) as f:
        while True:
            block = f.read(min(_CHUNK, left + 1))
            if not block:
                break
            left -= len(block)
            if left < 0:
                raise BankError(f"the archive member {info.filename!r} is larger than it says; it was tampered with")
            out.write(block)


def _read_manifest_json(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> dict[str, Any]:
    try:
        data = json.loads(_read_member(zf, members[MANIFEST_FILE]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BankError(f"the archive's {MANIFEST_FILE} is not valid JSON ({e}); export the bank again") from None
    marker = data.get("archive") if isinstance(data, dict) else None
    if not isinstance(marker, dict) or marker.get("format") != ARCHIVE_FORMAT:
        raise BankError("not a bank archive: its manifest lacks the safe denoiser archive marker")
    if marker.get("version") != ARCHIVE_VERSION:
        raise BankError(f"the archive has format version {marker.get('version')!r}; this extension reads "
                        f"version {ARCHIVE_VERSION}; update the extension")
    return data


def _latent_list(data: dict[str, Any], content_hash: str) -> list[tuple[str, LatentKey]]:
    items = data.get("latents", [])
    if not isinstance(items, list):
        raise BankError("the archive's list of latents is damaged")
    out = []
    for item in items:
        try:
            key = LatentKey(content_hash, str(item["vae_id"]), validate_resize(str(item["resize"])),
                            check_latent_hw(tuple(item["latent_hw"])))
            member = _latent_member(key)
        except (KeyError, TypeError, BankError) as e:
            raise BankError(f"the archive's list of latents has a damaged entry {str(item)[:200]} ({e})") from None
        if item.get("file") != member:
            raise BankError(f"the archive's latent file {str(item.get('file'))[:200]!r} does not match its key")
        out.append((member, key))
    if len({m for m, _ in out}) != len(out):
        raise BankError("the archive lists a latent file twice; it was tampered with")
    return out


def _check_member_set(
    members: dict[str, zipfile.ZipInfo], manifest: Manifest, latents: list[tuple[str, LatentKey]]
) -> None:
    expected = {MANIFEST_FILE, *(m for m, _ in latents)}
    if manifest.info.has_images:
        expected |= {f"images/{e.file}" for e in manifest.images}
    missing = sorted(expected - members.keys())
    extra = sorted(members.keys() - expected)
    if missing:
        raise BankError(f"the archive lacks {len(missing)} file(s) its manifest lists, e.g. {missing[0]!r}")
    if extra:
        raise BankError(f"the archive holds {len(extra)} file(s) its manifest does not list, e.g. {extra[0]!r}")


def _read_image(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], e: ImageEntry) -> bytes:
    data = _read_member(zf, members[f"images/{e.file}"])
    if hashlib.sha256(data).hexdigest() != e.sha256:
        raise BankError(f"image {e.source_name} in the archive does not match its recorded sha256; "
                        "the archive was damaged or tampered with")
    return data


def _check_images(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], manifest: Manifest) -> list[ImageEntry]:
    """Hash and decode every image (one at a time: memory holds one image); returns the entries with
    their perceptual hashes recomputed (an archive's own are not trusted)."""
    entries = []
    for e in manifest.images:
        data = _read_image(zf, members, e)
        result = stage_many([(e.source_name, data)], InputLimits())
        if not result.staged:
            reason = result.skipped[0].reason if result.skipped else "unreadable"
            raise BankError(f"image {e.source_name} in the archive cannot be used: {reason}")
        entries.append(dataclasses.replace(e, phash=result.staged[0].phash))
    return entries
