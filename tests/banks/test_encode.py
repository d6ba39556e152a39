"""The image -> latent pipeline: decoding, resizing, batching, and the encoder's output checks."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lib_safe_denoiser.banks.encode import check_latents, encode_images, image_to_tensor01, load_image
from lib_safe_denoiser.errors import BankError, SafeDenoiserError


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


def png_bytes(color=(200, 30, 60), size=(40, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def noise_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_load_image_from_path_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    for source in (path, str(path), png_bytes()):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == (40, 24)
        assert img.getpixel((0, 0)) == (200, 30, 60)


def test_load_image_converts_modes_and_composites_alpha_on_white():
    transparent = load_image(png_bytes(color=(0, 0, 0, 0), mode="RGBA"))
    assert transparent.mode == "RGB" and transparent.getpixel((3, 3)) == (255, 255, 255)
    assert load_image(png_bytes(color=128, mode="L")).getpixel((1, 1)) == (128, 128, 128)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] * 256)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (10, 20, 30)


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    img.save(path, format="JPEG", exif=exif)
    assert load_image(path).size == (20, 40)


def test_load_image_rejects_truncated_garbage_and_missing(tmp_path):
    raw_pixels = noise_image(0).tobytes()  # not an image file
    buf = io.BytesIO()
    noise_image(1).save(buf, format="PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BankError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(BankError, match="not a readable image"):
        load_image(raw_pixels)
    with pytest.raises(BankError, match="not found.*missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(SafeDenoiserError, match="my-name"):
        load_image(b"garbage", name="my-name")


def test_image_to_tensor01_exact_size_is_lossless():
    img = noise_image(2, size=(16, 8))
    t = image_to_tensor01(img, (8, 16))
    assert t.shape == (3, 8, 16) and t.dtype == torch.float32
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    assert torch.equal(t, expected)


def test_image_to_tensor01_covers_and_center_crops_without_stretching():
    # 3 vertical bands (red | green | blue) on a 3:1 image; a square crop keeps only the green centre.
    arr = np.zeros((40, 120, 3), dtype=np.uint8)
    arr[:, :40, 0] = 255
    arr[:, 40:80, 1] = 255
    arr[:, 80:, 2] = 255
    t = image_to_tensor01(Image.fromarray(arr), (32, 32))
    assert t.shape == (3, 32, 32)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t[1, :, 4:28].mean()) > 0.95  # green throughout the middle
    assert float(t[0].mean()) < 0.05 and float(t[2].mean()) < 0.05
    # a tall target from a wide image: scaled up to cover the height, still not stretched
    tall = image_to_tensor01(Image.fromarray(arr), (64, 16))
    assert tall.shape == (3, 64, 16) and float(tall[1].mean()) > 0.95


def test_encode_images_batches_reports_progress_and_matches_one_by_one(tmp_path):
    sources = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        noise_image(i).save(p)
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
    out = encode_images([png_bytes()], lambda x: enc(x).half(), (16, 16))
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
        encode_images([png_bytes()], encoder, (16, 16))


def test_encode_images_rejects_bad_arguments():
    enc = TinyEncoder()
    with pytest.raises(BankError, match="multiple of 8"):
        encode_images([png_bytes()], enc, (20, 16))
    with pytest.raises(BankError, match="no images"):
        encode_images([], enc, (16, 16))
    with pytest.raises(BankError, match="batch_size"):
        encode_images([png_bytes()], enc, (16, 16), batch_size=0)
    assert enc.calls == 0


def test_check_latents_rejects_channel_change():
    with pytest.raises(BankError, match="channels"):
        check_latents(torch.zeros(1, 16, 2, 2), 1, (2, 2), channels=4)
