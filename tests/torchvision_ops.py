"""Make ``import open_clip`` work in the test environment, where torchvision's compiled ops cannot load.

The registry's torchvision wheel is a CUDA build. Beside the CPU torch the tests pin, its
``_C`` extension fails to load (missing CUDA libraries), torchvision then runs without its
compiled operators, but its ``_meta_registrations`` module still registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and that fails with
"operator torchvision::nms does not exist". ``import open_clip`` imports torchvision, so it fails too.

``ensure_torchvision_importable`` declares those two operators' schemas (exactly as torchvision's
C++ library declares them) when, and only when, the compiled library cannot be loaded. The
operators then exist without a CPU kernel: calling them raises, as it would without the patch,
and nothing the CLIP code uses is replaced. A real WebUI has a matching torchvision, so the
library never does this at runtime; only tests (and benchmarks) call it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

NAMESPACE = "torchvision"
FAKE_REGISTERED_SCHEMAS: tuple[str, ...] = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
"""The operators torchvision's ``_meta_registrations`` registers fake kernels for without checking
that its compiled library loaded (torchvision/csrc/ops/nms.cpp declares these schemas)."""

_library: torch.library.Library | None = None
"""Kept alive for the whole process: a ``Library`` removes its definitions when it is collected."""


def compiled_ops_load() -> bool:
    """Whether torchvision's compiled ``_C`` library loads beside this torch (as torchvision checks it)."""
    spec = importlib.util.find_spec(NAMESPACE)
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for lib in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            try:
                torch.ops.load_library(str(lib))
            except (OSError, RuntimeError):
                return False
            return True
    return False


def ensure_torchvision_importable() -> bool:
    """Declare the missing operator schemas if torchvision's compiled ops cannot load; idempotent.

    Returns True when the schemas were declared (now or by an earlier call), False when
    torchvision is absent or its compiled library loads (nothing to do).
    """
    global _library
    if _library is not None:
        return True
    if importlib.util.find_spec(NAMESPACE) is None or compiled_ops_load():
        return False
    if all(hasattr(torch.ops.torchvision, schema.split("(")[0]) for schema in FAKE_REGISTERED_SCHEMAS):
        return False  # declared elsewhere already (another helper, a patched wheel)
    library = torch.library.Library(NAMESPACE, "DEF")
    for schema in FAKE_REGISTERED_SCHEMAS:
        library.define(schema)
    _library = library
    return True
