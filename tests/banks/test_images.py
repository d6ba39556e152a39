"""Decoding every kind of upload into RGB, the resize policies, perceptual hashes and thumbnails."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lib_safe_denoiser.banks.images import (
    MAX_PIXELS,
    NEUTRAL_GREY,
    RESIZE_POLICIES,
    THUMB_SIZE,
    BadImageError,
    decode_image,
    hamming,
    image_to_tensor01,
    load_image,
    perceptual_hash,
    resize_image,
    thumbnail_png,
    to_rgb,
)
from lib_safe_denoiser.errors import BankError
from tests.banks.sample_images import (
    animated,
    encode,
    exif_rotated_jpeg,
    noise,
    palette_png_with_transparency,
    png,
    png_header_only,
    scene,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def close(pixel, expected, tol=3) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


# ---- sources ---------------------------------------------------------------------------------
def test_loads_paths_bytes_and_pil_images(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png())
    for source in (path, str(path), png(), Image.open(io.BytesIO(png()))):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == (40, 24) and img.getpixel((0, 0)) == (200, 30, 60)
    assert decode_image(path)[1] == "PNG" and decode_image(Image.new("RGB", (2, 2)))[1] == ""


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied(orientation, top, bottom):
    img = load_image(exif_rotated_jpeg(orientation))  # stored 40x20: red left, blue right
    assert img.size == (20, 40)
    assert close(img.getpixel((10, 5)), top, 8) and close(img.getpixel((10, 34)), bottom, 8)


# ---- transparency: composited on neutral grey ------------------------------------------------
def test_rgba_and_la_are_composited_on_neutral_grey():
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 255, 255, 128))
    img = load_image(encode(rgba, "PNG"))
    assert img.getpixel((0, 0)) == RED and img.getpixel((3, 1)) == NEUTRAL_GREY
    assert close(img.getpixel((1, 0)), (192, 192, 192), 1)  # half-transparent white over grey
    assert load_image(encode(Image.new("LA", (3, 3), (0, 0)), "PNG")).getpixel((1, 1)) == NEUTRAL_GREY
    assert load_image(encode(Image.new("LA", (3, 3), (40, 255)), "PNG")).getpixel((1, 1)) == (40, 40, 40)


def test_palette_transparency_is_composited_on_grey():
    img = load_image(palette_png_with_transparency())
    assert img.getpixel((1, 1)) == RED and img.getpixel((6, 1)) == NEUTRAL_GREY


def test_pa_and_tRNS_grey_transparency():
    pa = Image.new("PA", (2, 2), (0, 0))
    pa.putpalette([10, 20, 30] * 256)
    assert to_rgb(pa).getpixel((0, 0)) == NEUTRAL_GREY
    gray = Image.new("L", (2, 2), 7)
    assert load_image(encode(gray, "PNG", transparency=7)).getpixel((0, 0)) == NEUTRAL_GREY


# ---- colour modes and bit depths --------------------------------------------------------------
def test_cmyk_jpeg_becomes_rgb():
    img = load_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=100))
    assert img.mode == "RGB" and close(img.getpixel((8, 8)), RED, 4)


def test_grayscale_and_bilevel():
    assert load_image(png(color=128, mode="L")).getpixel((1, 1)) == (128, 128, 128)
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.putpixel((3, 3), 1)
    img = load_image(encode(bilevel, "PNG"))
    assert img.getpixel((3, 3)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 0)


def test_16_bit_png_is_scaled_not_clipped():
    arr = np.array([[0, 257 * 100, 65535, 30000]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    img = load_image(data)
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 255, round(30000 / 257)]


def test_16_bit_big_endian_and_32_bit_integer_tiffs():
    big_endian = Image.frombytes("I;16B", (2, 1), bytes([0x00, 0x00, 0xFF, 0xFF]))
    img = load_image(encode(big_endian, "TIFF"))
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((1, 0)) == (255, 255, 255)
    widened = Image.fromarray(np.array([[0, 65535, 257 * 10]], dtype=np.int32))
    assert widened.mode == "I"
    assert [load_image(encode(widened, "TIFF")).getpixel((x, 0))[0] for x in range(3)] == [0, 255, 10]
    wide_range = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))  # its own range
    assert [load_image(encode(wide_range, "TIFF")).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_tiffs_are_scaled_from_unit_or_own_range():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [load_image(encode(unit, "TIFF")).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    hdr = Image.fromarray(np.array([[2.0, 4.0, 6.0]], dtype=np.float32))
    assert [load_image(encode(hdr, "TIFF")).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    bad = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(BadImageError, match="NaN"):
        load_image(encode(bad, "TIFF"), name="scan.tif")


def test_rgb_tiff_and_bmp():
    assert load_image(encode(Image.new("RGB", (6, 4), (1, 2, 3)), "TIFF")).getpixel((5, 3)) == (1, 2, 3)
    assert load_image(encode(Image.new("RGB", (6, 4), (4, 5, 6)), "BMP")).getpixel((0, 0)) == (4, 5, 6)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animations_give_their_first_frame(fmt):
    data = animated(fmt)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    img, found = decode_image(data)
    assert found == fmt and img.size == (12, 10) and close(img.getpixel((5, 5)), RED, 2)


def test_transparent_gif_frame_is_composited_on_grey():
    frame = Image.new("P", (6, 6), 1)
    frame.putpalette([0, 255, 0, 0, 0, 0] + [0] * 762)
    frame.paste(0, (0, 0, 3, 6))
    img = load_image(encode(frame, "GIF", transparency=1))
    assert img.getpixel((1, 1)) == (0, 255, 0) and img.getpixel((4, 1)) == NEUTRAL_GREY


# ---- refusals: each names the file and the reason ----------------------------------------------
def test_pixel_limit_names_file_and_size():
    with pytest.raises(BadImageError, match=r"big\.png: image too large \(40x30, 0\.0 megapixels\)") as info:
        load_image(png(size=(40, 30)), name="big.png", max_pixels=1000)
    assert info.value.name == "big.png" and "limit" in info.value.reason
    assert load_image(png(size=(40, 30)), max_pixels=None).size == (40, 30)
    assert MAX_PIXELS >= 8000 * 6000  # any camera's photo fits


def test_pixel_limit_applies_to_in_memory_images():
    with pytest.raises(BadImageError, match="too large"):
        load_image(Image.new("RGB", (50, 50)), max_pixels=100)


def test_decompression_bomb_header_is_refused_before_decoding():
    # 10000x10000 claims 100 MP: over our limit, and over Pillow's warning threshold.
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(BadImageError, match=r"10000x10000"):
        load_image(png_header_only(10_000, 10_000), name="bomb.png")
    with warnings.catch_warnings():  # a warnings filter that makes Pillow's warning an error
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(BadImageError, match=r"bomb\.png: image too large \(100\.0 megapixels\)"):
            load_image(png_header_only(10_000, 10_000), name="bomb.png")
    # 20000x20000 (400 MP) is over twice Pillow's limit: Pillow itself raises.
    with pytest.raises(BadImageError, match=r"huge\.png: image too large \(400\.0 megapixels\); the limit is 67\.1"):
        load_image(png_header_only(20_000, 20_000), name="huge.png")


def test_zero_byte_truncated_corrupt_and_text_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    full = encode(noise(1, (64, 64)), "PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(full[: len(full) // 2])
    jpeg = encode(noise(2, (64, 64)), "JPEG")
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    corrupt = bytearray(full)
    corrupt[200:260] = bytes(60)  # zeroed IDAT bytes: a CRC/zlib failure
    text = tmp_path / "x.png"
    text.write_text("this is not an image\n")
    cases = [
        (empty, "empty file"),
        (truncated, "truncated or corrupt"),
        (cut_jpeg, "truncated or corrupt"),
        (bytes(corrupt), "truncated or corrupt"),
        (text, "not an image"),
        (tmp_path / "missing.png", "file not found"),
        (tmp_path, "is a folder"),
    ]
    for source, reason in cases:
        with pytest.raises(BadImageError) as info:
            load_image(source, name=None if not isinstance(source, bytes) else "corrupt.png")
        expected_name = "corrupt.png" if isinstance(source, bytes) else str(source)
        assert info.value.name == expected_name and reason in info.value.reason, (source, info.value)
        assert str(info.value).startswith(expected_name)
        assert isinstance(info.value, BankError)


def test_formats_outside_the_allowed_list_are_refused_unread():
    for fmt in ("PPM", "TGA", "ICO"):
        with pytest.raises(BadImageError, match="not an image"):
            load_image(encode(Image.new("RGB", (16, 16), RED), fmt), name=f"x.{fmt.lower()}")


def test_unsupported_source_type():
    with pytest.raises(BadImageError, match="expected a file path"):
        load_image(12345)


# ---- resize policies ---------------------------------------------------------------------------
def test_exact_size_is_lossless_for_every_policy():
    img = noise(2, size=(16, 8))
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    for policy in RESIZE_POLICIES:
        t = image_to_tensor01(img, (8, 16), policy)
        assert t.shape == (3, 8, 16) and t.dtype == torch.float32 and torch.equal(t, expected)


def test_crop_covers_and_center_crops_without_stretching():
    arr = np.zeros((40, 120, 3), dtype=np.uint8)  # red | green | blue bands, 3:1
    arr[:, :40, 0] = 255
    arr[:, 40:80, 1] = 255
    arr[:, 80:, 2] = 255
    t = image_to_tensor01(Image.fromarray(arr), (32, 32))  # default: crop
    assert t.shape == (3, 32, 32) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t[1, :, 4:28].mean()) > 0.95
    assert float(t[0].mean()) < 0.05 and float(t[2].mean()) < 0.05
    tall = image_to_tensor01(Image.fromarray(arr), (64, 16), "crop")
    assert tall.shape == (3, 64, 16) and float(tall[1].mean()) > 0.95


def test_pad_fits_inside_and_fills_with_grey_exactly():
    out = to_uint8(image_to_tensor01(Image.new("RGB", (40, 20), RED), (32, 32), "pad"))
    grey, red = np.array(NEUTRAL_GREY, np.uint8), np.array(RED, np.uint8)
    assert (out[:8] == grey).all() and (out[24:] == grey).all()  # 40x20 -> 32x16, centred
    assert (out[8:24] == red).all()
    tall = to_uint8(image_to_tensor01(Image.new("RGB", (10, 30), BLUE), (24, 16), "pad"))  # -> 8x24
    assert (tall[:, :4] == grey).all() and (tall[:, 12:] == grey).all() and (tall[:, 4:12] == BLUE).all()


def test_stretch_keeps_everything_and_distorts():
    bands = np.zeros((20, 40, 3), dtype=np.uint8)  # red 10 | green 20 | blue 10 columns, 2:1
    bands[:, :10, 0] = bands[:, 10:30, 1] = bands[:, 30:, 2] = 255
    out = to_uint8(image_to_tensor01(Image.fromarray(bands), (16, 16), "stretch")).astype(int)
    assert np.abs(out[:, :2] - RED).max() <= 2 and np.abs(out[:, 14:] - BLUE).max() <= 2  # both sides kept
    assert np.abs(out[:, 6:10] - (0, 255, 0)).max() <= 2
    crop = to_uint8(image_to_tensor01(Image.fromarray(bands), (16, 16), "crop")).astype(int)
    assert np.abs(crop[:, 1:15] - (0, 255, 0)).max() <= 2  # cover-and-crop keeps only the green middle
    assert crop[:, 0, 0].max() < 16 and crop[:, 15, 2].max() < 16  # at most a resampling fringe of the rest


def test_resize_converts_modes_and_rejects_unknown_policy():
    assert resize_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (4, 4), "pad").getpixel((1, 1)) == NEUTRAL_GREY
    with pytest.raises(BankError, match="unknown resize policy 'zoom'.*'crop', 'pad', 'stretch'"):
        image_to_tensor01(Image.new("RGB", (8, 8)), (4, 4), "zoom")
    with pytest.raises(BankError, match="size_hw"):
        image_to_tensor01(Image.new("RGB", (8, 8)), (0, 4))


# ---- perceptual hash ---------------------------------------------------------------------------
def test_perceptual_hash_is_64_bit_and_stable_under_reencoding_and_resizing():
    for seed in range(5):
        original = scene(seed)
        h = perceptual_hash(original)
        assert 0 <= h < 1 << 64
        variants = [
            load_image(encode(original, "JPEG", quality=60)),
            original.resize((80, 60), Image.Resampling.BILINEAR),
            original.resize((640, 480), Image.Resampling.BICUBIC),
            load_image(encode(original.convert("RGBA"), "WEBP", quality=70)),
        ]
        assert all(hamming(h, perceptual_hash(v)) <= 4 for v in variants), seed
        others = [perceptual_hash(scene(seed + 100 + k)) for k in range(3)]
        assert all(hamming(h, o) >= 10 for o in others), seed


def test_perceptual_hash_bits_follow_brightness_steps():
    ramp_down = Image.fromarray(np.tile(np.linspace(255, 0, 90).astype(np.uint8), (80, 1)))
    assert perceptual_hash(ramp_down) == (1 << 64) - 1  # every cell brighter than its right neighbour
    assert perceptual_hash(ramp_down.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == 0
    assert hamming(0, (1 << 64) - 1) == 64 and hamming(0b1010, 0b0110) == 2


# ---- thumbnails --------------------------------------------------------------------------------
def test_thumbnail_png_longest_side_and_small_images_kept():
    big = Image.open(io.BytesIO(thumbnail_png(scene(1, (300, 150)))))
    assert big.format == "PNG" and big.size == (THUMB_SIZE, THUMB_SIZE // 2)
    tall = Image.open(io.BytesIO(thumbnail_png(scene(2, (100, 400)), size=64)))
    assert tall.size == (16, 64)
    small = Image.open(io.BytesIO(thumbnail_png(Image.new("RGBA", (40, 24), (0, 0, 0, 0)))))
    assert small.size == (40, 24) and small.mode == "RGB" and small.getpixel((5, 5)) == NEUTRAL_GREY
    with pytest.raises(BankError, match="thumbnail size"):
        thumbnail_png(Image.new("RGB", (4, 4)), size=0)
