"""The stores of this WebUI process, all under its ``--data-dir``: banks, presets and the operator's policy.

Every process sharing the data dir reads the same files (each store re-reads on every use), so a
change made in one process applies in the others from their next request.
"""

from __future__ import annotations

import os

from modules import paths_internal

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.cli import STORE_SUBDIR
from lib_safe_denoiser.generation.job import DenoiserFactory
from lib_safe_denoiser.policy.operator_policy import PolicyStore
from lib_safe_denoiser.policy.presets_store import PresetStore
from safe_denoiser_webui.options import OPT_CACHE_LIMIT_MB, option

ROOT = os.path.join(paths_internal.data_path, STORE_SUBDIR)
STORE = BankStore(ROOT)
PRESET_STORE = PresetStore(os.path.join(ROOT, "presets"))
POLICY_STORE = PolicyStore(os.path.join(ROOT, "policy"))
FACTORY = DenoiserFactory(STORE)


def store() -> BankStore:
    """The store, with the cache size limit as the settings say now (they can change at any time)."""
    limit_mb = int(option(OPT_CACHE_LIMIT_MB) or 0)
    STORE.cache_limit_bytes = limit_mb * 2**20 if limit_mb > 0 else None
    return STORE
