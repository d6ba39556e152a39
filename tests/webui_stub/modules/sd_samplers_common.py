"""modules/sd_samplers_common.py: VAE encoding and the live-preview store."""

from __future__ import annotations

import torch

from modules import shared


class InterruptedException(BaseException):
    pass


previews: list[torch.Tensor] = []
"""What store_latent received (the real one renders it as the live preview)."""


def store_latent(decoded: torch.Tensor) -> None:
    shared.state.current_latent = decoded
    previews.append(decoded.clone())


def images_tensor_to_samples(image, approximation=None, model=None):
    """image [0, 1] -> latent, with the model's first stage, one image at a time as the real one does."""
    if model is None:
        model = shared.sd_model
    image = image * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
