"""modules/paths_internal.py: data_path is the --data-dir (a fresh folder per test process here,
removed when the process ends: mutation testing starts thousands of them)."""

import atexit
import shutil
import tempfile

data_path = tempfile.mkdtemp(prefix="webui-data-")
atexit.register(shutil.rmtree, data_path, ignore_errors=True)
