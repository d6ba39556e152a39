"""Cross-process locks of the bank store: several WebUI processes may share one data directory.

Every read-modify-write of a manifest holds its bank's lock, so two processes appending to the same
bank never lose each other's images. Store-wide work (``gc``, ``rename``, and the short commit step
of every write, which must not interleave with ``gc``'s scan) holds the store lock. Order, to rule
out deadlocks: bank locks first (sorted by key), the store lock last; ``gc`` takes only the store lock.

A lock is a ``filelock.FileLock`` (an OS lock, released by the kernel if the process dies) behind a
per-process ``threading.RLock``: threads of one process queue on the RLock, and a thread may re-enter
a lock it already holds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from lib_safe_denoiser.banks.files import safe_component
from lib_safe_denoiser.errors import BankError

LOCKS_DIR = "locks"
LOCK_TIMEOUT_S = 300.0
"""How long a writer waits for another process before giving up with a "busy" error."""

_STORE_LOCK = "store.lock"
_CACHE_LOCK = "cache.lock"

_REGISTRY: dict[str, InterProcessLock] = {}
_REGISTRY_GUARD = threading.Lock()


class InterProcessLock:
    """One lock file, shared by every thread of this process and by other processes."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._thread = threading.RLock()
        self._file = FileLock(str(path))

    @contextlib.contextmanager
    def hold(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        if not self._thread.acquire(timeout=timeout):
            raise self._busy(timeout)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file.acquire(timeout=timeout)
            except Timeout:
                raise self._busy(timeout) from None
            try:
                yield
            finally:
                self._file.release()
        finally:
            self._thread.release()

    def _busy(self, timeout: float) -> BankError:
        return BankError(
            f"{self.what} is busy: another process (or WebUI tab) has been writing it for over {timeout:.0f} s; "
            "try again later"
        )


def _forget_inherited_locks() -> None:
    """A forked child starts with no locks: filelock refuses instances inherited across fork, and a
    parent thread may have held one of the RLocks at the moment of the fork."""
    global _REGISTRY_GUARD
    _REGISTRY.clear()
    _REGISTRY_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_inherited_locks)


def _lock_at(path: Path, what: str) -> InterProcessLock:
    key = str(path.resolve())
    with _REGISTRY_GUARD:
        lock = _REGISTRY.get(key)
        if lock is None:
            lock = _REGISTRY[key] = InterProcessLock(path, what)
        return lock


class StoreLocks:
    """The locks of one store root (files under ``<root>/locks/``, created on first use)."""

    def __init__(self, root: Path, timeout: float = LOCK_TIMEOUT_S) -> None:
        self.dir = root / LOCKS_DIR
        self.timeout = timeout

    @contextlib.contextmanager
    def banks(self, *names: str) -> Iterator[None]:
        """Hold the locks of ``names`` (validated bank names), case-insensitively: 'A' and 'a' share one."""
        keys = sorted({n.casefold() for n in names})
        with contextlib.ExitStack() as stack:
            for key in keys:
                lock = _lock_at(self.dir / f"bank-{safe_component(key)}.lock", f"bank {key!r}")
                stack.enter_context(lock.hold(self.timeout))
            yield

    def store(self) -> contextlib.AbstractContextManager[None]:
        """The store-wide lock (gc, rename, commits)."""
        return _lock_at(self.dir / _STORE_LOCK, "the bank store").hold(self.timeout)

    def cache(self) -> contextlib.AbstractContextManager[None]:
        """The latent cache's lock, so that two processes never evict at once."""
        return _lock_at(self.dir / _CACHE_LOCK, "the latent cache").hold(self.timeout)
