"""Run by the WebUI at start-up: install what the extension needs and the WebUI lacks, nothing else.

Idempotent: a package already present is left alone (whatever its version), and torch is never
touched — the WebUI owns it.
"""

import launch

REQUIREMENTS = {
    # distribution name: pip requirement
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "filelock": "filelock",  # cross-process locks on bank manifests (several WebUIs, one data dir)
    "matplotlib": "matplotlib",  # the per-generation diagnostics plot
    "open_clip_torch": "open_clip_torch",  # text concepts and CLIP curation (the WebUI usually ships it)
}

for dist, requirement in REQUIREMENTS.items():
    if not launch.is_installed(dist):
        launch.run_pip(f"install {requirement}", f"sd-webui-safe-denoiser requirement: {requirement}")
