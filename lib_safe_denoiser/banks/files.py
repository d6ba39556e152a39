"""Small file-system helpers of the bank store: atomic writes and path-safe names.

Every file the store writes goes through ``atomic_write_bytes``, ``atomic_copy`` or ``atomic_writer``:
a temp file in the same directory, fsync, ``os.replace``. A crash or a full disk therefore leaves
either the old file or the new one, never half of one; leftover temp files start with
``TEMP_PREFIX`` and are swept by ``BankStore.gc``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from lib_safe_denoiser.errors import BankError

TEMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20

_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def is_windows_reserved(name: str) -> bool:
    """Names Windows cannot create as files (``CON``, ``nul.txt``, ``COM1``...)."""
    return bool(_WINDOWS_RESERVED.match(name.strip()))


def safe_component(value: str, *, max_len: int = 64) -> str:
    """A single, portable path component for an arbitrary id (e.g. a VAE name or a hash).

    Ids that are already safe map to themselves; any other id gets its unsafe characters
    replaced and a short hash of the original appended, so two different ids never share
    a directory (``sd/vae`` and ``sd_vae`` stay apart).
    """
    cleaned = _UNSAFE_CHARS.sub("_", value).strip("._")
    if cleaned == value and 0 < len(value) <= max_len and not is_windows_reserved(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]
    return f"{cleaned[: max_len - 13] or 'id'}-{digest}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: Path, *, verify: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it appears, complete, only if the block ends normally.

    ``verify(temp_path)`` runs on the finished temp file before it replaces ``path``; if it raises,
    nothing is replaced (an import checks a latent file's header and shape this way).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp_name))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old content or the new, never a mix."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_copy(src: Path, dst: Path, *, expected_sha256: str) -> None:
    """Copy ``src`` to ``dst`` atomically, refusing (before anything is replaced) if its bytes no
    longer hash to ``expected_sha256``: the file changed after it was validated."""
    h = hashlib.sha256()
    with atomic_writer(dst) as out, open(src, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
            out.write(block)
        if h.hexdigest() != expected_sha256:
            raise BankError(f"image changed while it was being added: {src}; try again")


def mtime(path: Path) -> float:
    """Modification time, or +inf if the file vanished (so a sweep treats it as too new to touch)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); Windows cannot open directories, which is fine there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
