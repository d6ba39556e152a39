"""The bank store and the denoiser factory of this WebUI process, under its ``--data-dir``."""

from __future__ import annotations

import os

from modules import paths_internal

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.cli import STORE_SUBDIR
from lib_safe_denoiser.generation.job import DenoiserFactory
from safe_denoiser_webui.options import OPT_CACHE_LIMIT_MB, option

STORE = BankStore(os.path.join(paths_internal.data_path, STORE_SUBDIR))
FACTORY = DenoiserFactory(STORE)


def store() -> BankStore:
    """The store, with the cache size limit as the settings say now (they can change at any time)."""
    limit_mb = int(option(OPT_CACHE_LIMIT_MB) or 0)
    STORE.cache_limit_bytes = limit_mb * 2**20 if limit_mb > 0 else None
    return STORE
