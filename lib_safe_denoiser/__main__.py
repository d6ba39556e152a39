"""``python -m lib_safe_denoiser``: see ``lib_safe_denoiser.cli``."""

from lib_safe_denoiser.cli import main

raise SystemExit(main())
