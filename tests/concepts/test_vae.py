"""The differentiable decode from a WebUI-shaped model object (ldm/sgm: scale_factor; SD3: latent_format)."""

from __future__ import annotations

import types

import torch

from lib_safe_denoiser.concepts.vae import differentiable_decode, vae_blocks
from tests.concepts.tiny_models import TinyResnetBlock, tiny_decoder


class FirstStage(torch.nn.Module):
    """Like ldm's AutoencoderKL: ``decode`` runs post_quant_conv then the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.post_quant_conv = torch.nn.Conv2d(4, 4, 1)
        self.decoder = tiny_decoder()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def test_ldm_and_sgm_models_decode_z_over_the_scale_factor_with_gradient():
    vae = FirstStage().requires_grad_(False)
    model = types.SimpleNamespace(first_stage_model=vae, scale_factor=torch.tensor(0.18215))
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    images = differentiable_decode(model)(z)
    assert torch.allclose(images, vae.decode(z / 0.18215))
    (grad,) = torch.autograd.grad(images.sum(), z)
    assert grad.abs().sum() > 0
    assert [type(b) for b in vae_blocks(model)] == [TinyResnetBlock]


def test_sd3_models_use_their_latent_format_and_a_half_vae_returns_float32():
    vae = FirstStage().requires_grad_(False).to(torch.bfloat16)
    fmt = types.SimpleNamespace(process_out=lambda z: z / 1.5305 + 0.0609)
    model = types.SimpleNamespace(first_stage_model=vae, latent_format=fmt)
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    images = differentiable_decode(model)(z)
    assert images.dtype == torch.float32
    assert torch.allclose(images, vae.decode((z / 1.5305 + 0.0609).to(torch.bfloat16)).float())
    assert torch.autograd.grad(images.sum(), z)[0].dtype == torch.float32
