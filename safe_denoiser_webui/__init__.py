"""The WebUI side of the extension: what every script file in ``scripts/`` shares.

Only this package and ``scripts/`` import the WebUI's ``modules``; the logic lives in
``lib_safe_denoiser``. The WebUI puts the extension's folder on ``sys.path`` while it loads
``scripts/``, which is how the script files import this package.
"""
