"""The image -> latent pipeline: batching, background decoding, resize policies, cancel, output checks."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from PIL import Image

import lib_safe_denoiser.banks.encode as encode_module
from lib_safe_denoiser.banks.encode import check_latents, encode_images
from lib_safe_denoiser.banks.images import image_to_tensor01, load_image
from lib_safe_denoiser.errors import BankError, EncodeCancelled
from tests.banks.sample_images import encode, exif_rotated_jpeg, noise, png, scene


class TinyEncoder(torch.nn.Module):
    """A real (fixed) VAE stand-in: 8x average pooling and a 1x1 conv to 4 channels; counts calls."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(8)
        self.proj = torch.nn.Conv2d(3, channels, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1.0, 1.0, channels * 3).reshape(channels, 3, 1, 1))
            self.proj.bias.fill_(0.1)
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == 3
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        return self.proj(self.pool(x)) * 0.18215


def test_encode_images_batches_reports_progress_and_matches_one_by_one(tmp_path):
    sources = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        noise(i).save(p)
        sources.append(p)
    enc = TinyEncoder()
    seen = []
    out = encode_images(sources, enc, (32, 24), batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (5, 4, 4, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert enc.batch_sizes == [2, 2, 1]
    assert seen == [(2, 5), (4, 5), (5, 5)]
    singles = encode_images(sources, TinyEncoder(), (32, 24), batch_size=1)
    assert torch.allclose(out, singles, atol=1e-6)
    direct = enc(image_to_tensor01(load_image(sources[3]), (32, 24))[None])
    assert torch.allclose(out[3:4], direct, atol=1e-6)
    assert enc.calls == math.ceil(5 / 2) + 1


def test_encode_images_converts_output_to_float32_cpu():
    enc = TinyEncoder()
    out = encode_images([png()], lambda x: enc(x).half(), (16, 16))
    assert out.dtype == torch.float32 and out.shape == (1, 4, 2, 2)


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (lambda x: torch.zeros(x.shape[0], 4, 3, 3), r"shape \[1, 4, 3, 3\], expected \[1, C, 2, 2\]"),
        (lambda x: torch.zeros(x.shape[0] + 1, 4, 2, 2), "shape"),
        (lambda x: torch.zeros(x.shape[0], 4, 4), "shape"),
        (lambda x: torch.full((x.shape[0], 4, 2, 2), float("nan")), "NaN"),
        (lambda x: x.numpy(), "expected a torch.Tensor"),
    ],
)
def test_encode_images_rejects_bad_encoder_output(encoder, message):
    with pytest.raises(BankError, match=message):
        encode_images([png()], encoder, (16, 16))


def test_encode_images_rejects_bad_arguments():
    enc = TinyEncoder()
    with pytest.raises(BankError, match="multiple of 8"):
        encode_images([png()], enc, (20, 16))
    with pytest.raises(BankError, match="no images"):
        encode_images([], enc, (16, 16))
    with pytest.raises(BankError, match="batch_size"):
        encode_images([png()], enc, (16, 16), batch_size=0)
    assert enc.calls == 0


def test_check_latents_rejects_channel_change():
    with pytest.raises(BankError, match="channels"):
        check_latents(torch.zeros(1, 16, 2, 2), 1, (2, 2), channels=4)


def write_images(folder, n: int) -> list:
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        scene(i, (48, 40)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
def test_encode_images_follows_the_resize_policy(tmp_path, resize):
    sources = write_images(tmp_path, 3)
    enc = TinyEncoder()
    out = encode_images(sources, enc, (32, 16), resize=resize, batch_size=2)
    direct = torch.cat([enc(image_to_tensor01(load_image(s), (32, 16), resize)[None]) for s in sources])
    assert torch.allclose(out, direct, atol=1e-6)


def test_resize_policies_give_different_latents(tmp_path):
    sources = write_images(tmp_path, 1)
    outs = [encode_images(sources, TinyEncoder(), (32, 16), resize=r) for r in ("crop", "pad", "stretch")]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    with pytest.raises(BankError, match="unknown resize policy"):
        encode_images(sources, TinyEncoder(), (32, 16), resize="fit")


def test_cancel_between_batches_raises_and_stops_encoding(tmp_path):
    sources = write_images(tmp_path, 7)
    enc = TinyEncoder()
    seen = []
    with pytest.raises(EncodeCancelled, match="cancelled after 4 of 7 images") as info:
        encode_images(
            sources, enc, (16, 16), batch_size=2, progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 2
        )
    assert isinstance(info.value, BankError)
    assert enc.calls == 2 and seen == [2, 4]
    never = TinyEncoder()
    with pytest.raises(EncodeCancelled, match="after 0 of 7"):
        encode_images(sources, never, (16, 16), cancel=lambda: True)
    assert never.calls == 0
    assert encode_images(sources, TinyEncoder(), (16, 16), cancel=lambda: False).shape[0] == 7


def test_next_batch_is_decoded_while_the_encoder_runs(tmp_path, monkeypatch):
    """The encoder of batch 0 waits until an image of batch 1 has been decoded: only a background
    decoder can make that happen (a serial pipeline would time the wait out)."""
    sources = write_images(tmp_path, 4)
    decoded_next = threading.Event()
    real_load = encode_module.load_image

    def recording_load(source, **kwargs):
        img = real_load(source, **kwargs)
        if source in sources[2:]:
            decoded_next.set()
        return img

    monkeypatch.setattr(encode_module, "load_image", recording_load)
    enc = TinyEncoder()
    overlapped = []

    def waiting_encoder(x):
        if not overlapped:
            overlapped.append(decoded_next.wait(timeout=30))
        return enc(x)

    out = encode_images(sources, waiting_encoder, (16, 16), batch_size=2)
    assert overlapped == [True] and out.shape == (4, 4, 2, 2)


def test_bad_image_mid_batch_is_named_and_nothing_returned(tmp_path):
    sources = write_images(tmp_path, 5)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    enc = TinyEncoder()
    with pytest.raises(BankError, match="broken.png: truncated or corrupt"):
        encode_images([*sources[:2], broken, *sources[2:]], enc, (16, 16), batch_size=2)
    assert enc.calls == 1  # the first batch ran; the one holding the bad file never reached the encoder


def test_large_jpegs_decode_at_reduced_scale_with_orientation(tmp_path):
    big = scene(7, (1600, 1200))
    path = tmp_path / "photo.jpg"
    big.save(path, quality=92)
    enc = TinyEncoder()
    fast = encode_images([path], enc, (64, 64))
    full = enc(image_to_tensor01(load_image(path), (64, 64))[None])
    assert torch.allclose(fast, full, atol=0.02)  # DCT-scaled decoding: the same picture
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(exif_rotated_jpeg(6, size=(1600, 800)))
    upright = enc(image_to_tensor01(load_image(rotated), (64, 32))[None])
    assert torch.allclose(encode_images([rotated], enc, (64, 32)), upright, atol=0.02)


def test_encode_images_accepts_mixed_sources(tmp_path):
    path = tmp_path / "a.png"
    noise(1).save(path)
    sources = [path, str(path), path.read_bytes(), Image.open(path), encode(noise(1), "PNG")]
    out = encode_images(sources, TinyEncoder(), (16, 16))
    assert out.shape == (5, 4, 2, 2) and torch.allclose(out[0], out[4])
