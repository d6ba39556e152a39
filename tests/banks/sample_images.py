"""Real image files of every kind users upload, made on the fly for the bank input tests."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EXIF_ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def scene(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth photo-like picture (gradients and blurred blobs): what perceptual hashes are made for."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * rng.uniform(0.5, 2) + y * rng.uniform(0, 1)) % 256 for _ in range(3)], -1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = [x0, y0, x0 + int(rng.integers(15, 60)), y0 + int(rng.integers(15, 60))]
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img.filter(ImageFilter.GaussianBlur(2))


def noise(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png(color=(200, 30, 60), size=(40, 24), mode="RGB") -> bytes:
    return encode(Image.new(mode, size, color), "PNG")


def halves(size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: shows rotations and resizes pixel-exactly."""
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def exif_rotated_jpeg(orientation: int = 6, size=(40, 20)) -> bytes:
    img = halves(size)
    exif = img.getexif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


def palette_png_with_transparency() -> bytes:
    """Index 0 opaque red (left half), index 1 transparent (right half)."""
    img = Image.new("P", (8, 4), 1)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(0, (0, 0, 4, 4))
    return encode(img, "PNG", transparency=1)


def animated(fmt: str, colors=((255, 0, 0), (0, 0, 255))) -> bytes:
    frames = [Image.new("RGB", (12, 10), c) for c in colors]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels: what a decompression bomb looks like to a decoder."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def mark_encrypted(zip_bytes: bytes) -> bytes:
    """Set the 'encrypted' flag on every member (local and central headers), as a password zip has it."""
    data = bytearray(zip_bytes)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := data.find(signature, start)) != -1:
            data[i + flag_offset] |= 0x01
            start = i + 4
    return bytes(data)
