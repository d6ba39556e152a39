"""The bank store and the denoiser factory of this WebUI process, under its ``--data-dir``."""

from __future__ import annotations

import os

from modules import paths_internal

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.cli import STORE_SUBDIR
from lib_safe_denoiser.generation.job import DenoiserFactory

STORE = BankStore(os.path.join(paths_internal.data_path, STORE_SUBDIR))
FACTORY = DenoiserFactory(STORE)
