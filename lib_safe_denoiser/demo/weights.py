"""The shipped weights: safetensors files whose metadata holds the constructor arguments.

Floating-point tensors are stored in float16 (half the size; the models run in float32, and the
rounding changes the benchmark's numbers by less than their sampling noise) and loaded back
into the float32 modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from lib_safe_denoiser.demo.data import ASSETS
from lib_safe_denoiser.demo.models import DigitClassifier, EDMDenoiser

DENOISER_FILE = ASSETS / "denoiser.safetensors"
CLASSIFIER_FILE = ASSETS / "classifier.safetensors"
STORAGE_DTYPE = torch.float16


def save_model(model: nn.Module, path: Path, **extra: object) -> None:
    """Write the state dict (floats as float16) with ``model.hparams`` (and ``extra``, e.g. training
    facts) as metadata."""
    state = {k: (v.to(STORAGE_DTYPE) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"hparams": json.dumps(model.hparams), "storage_dtype": json.dumps(str(STORAGE_DTYPE)),
            **{k: json.dumps(v) for k, v in extra.items()}}
    save_file(state, str(path), metadata=meta)


def read_metadata(path: Path) -> dict[str, object]:
    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def _load(cls: type[nn.Module], path: Path) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m lib_safe_denoiser.demo.train` to create it")
    model = cls(**read_metadata(path)["hparams"])
    model.load_state_dict(load_file(str(path)))  # copies into the float32 parameters
    return model.eval().requires_grad_(False)


def load_denoiser(path: Path = DENOISER_FILE) -> EDMDenoiser:
    """The bundled digits denoiser, in eval mode, on the CPU."""
    return _load(EDMDenoiser, path)  # type: ignore[return-value]


def load_classifier(path: Path = CLASSIFIER_FILE) -> DigitClassifier:
    """The bundled digit classifier, in eval mode, on the CPU."""
    return _load(DigitClassifier, path)  # type: ignore[return-value]
