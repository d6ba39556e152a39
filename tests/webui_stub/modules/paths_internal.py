"""modules/paths_internal.py: data_path is the --data-dir (a fresh folder per test session here)."""

import tempfile

data_path = tempfile.mkdtemp(prefix="webui-data-")
