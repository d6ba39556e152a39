"""Decoding what users upload into clean RGB images, resizing them for the VAE, and hashing them.

A negation bank is built from whatever people have on disk: phone photos with EXIF rotation,
transparent PNG cut-outs, CMYK JPEGs from print workflows, 16-bit and float scans, animated GIFs,
truncated downloads and files with the wrong extension. Everything here turns those into one
predictable thing (an 8-bit RGB ``PIL.Image``) or a ``BadImageError`` that names the file and says
what is wrong with it, so a batch can report bad files and keep the good ones.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_safe_denoiser.errors import BankError

ImageSource = str | os.PathLike | bytes | Image.Image

RESIZE_POLICIES: tuple[str, ...] = ("crop", "pad", "stretch")
"""How an image meets the VAE's pixel size: ``crop`` scales to cover it and cuts the centre (no
distortion, margins lost), ``pad`` scales to fit inside and fills the rest with ``NEUTRAL_GREY``
(nothing lost, borders added), ``stretch`` scales each axis on its own (nothing lost, distorted)."""
DEFAULT_RESIZE = "crop"

MAX_PIXELS = 8192 * 8192
"""Largest image (width x height) decoded: ~67 megapixels, above any camera's JPEG and far below
the gigapixel 'decompression bombs' that a tiny file can expand to (one 8-bit RGB copy is ~200 MB)."""

THUMB_SIZE = 128
"""Longest side of a thumbnail, in pixels: a bank browser grid cell."""

NEUTRAL_GREY = (128, 128, 128)
"""Background behind transparent pixels and around ``pad``-ed images.

The VAE sees pixels mapped to [-1, 1]; mid-grey maps to ~0, the input it is least biased by.
White or black backgrounds would pull every latent of a cut-out toward a bright or dark image, and
since a bank's latents steer generations *away* from the bank, that brightness shift would leak into
every steered image. Grey adds the least signal of its own.
"""

DECODABLE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""Pillow formats ``load_image`` will open (JPEG includes MPO, the multi-picture JPEG of many phones). Anything
else is refused unread: Pillow's rarer plugins (EPS runs Ghostscript, PSD, ...) are needless attack
surface for files uploaded by other people."""

HASH_GRID = (9, 8)
"""dHash grid (width, height): 8 horizontal neighbour comparisons per row, 8 rows -> 64 bits."""

_FLOAT_MODES = ("F",)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PIXELS_IN_MESSAGE = re.compile(r"\((\d+) pixels\)")


class BadImageError(BankError):
    """An image that cannot be used: ``name`` is the file (or upload) and ``reason`` says why.

    The two parts are kept apart so a batch can list ``name (reason)`` per skipped file.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def describe_source(source: object) -> str:
    """A short human name for an image source, for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of image data>"
    if isinstance(source, Image.Image):
        return f"<in-memory {source.mode} image {source.width}x{source.height}>"
    return str(source)


def validate_resize(resize: str) -> str:
    """Return ``resize`` if it is one of ``RESIZE_POLICIES``; ``BankError`` listing them otherwise."""
    if resize not in RESIZE_POLICIES:
        choices = ", ".join(repr(p) for p in RESIZE_POLICIES)
        raise BankError(f"unknown resize policy {resize!r}; use one of {choices}")
    return resize


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = MAX_PIXELS,
    min_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) fully into an 8-bit RGB image.

    Raises ``BadImageError`` naming the file (or ``name``) and the reason. ``max_pixels=None``
    lifts the size limit. ``min_size`` (width, height) is the size the caller will resize to: large
    JPEGs are then decoded at a reduced scale (libjpeg DCT scaling, still at least that size), which
    makes phone photos several times cheaper to decode for a 512x512 VAE input.
    """
    return decode_image(source, name=name, max_pixels=max_pixels, min_size=min_size)[0]


def decode_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = MAX_PIXELS,
    min_size: tuple[int, int] | None = None,
) -> tuple[Image.Image, str]:
    """``load_image`` plus the file's format as Pillow names it (``"PNG"``, ``"JPEG"``...; ``""``
    for in-memory images): staging stores the original bytes and needs their file extension."""
    name = name or describe_source(source)
    if isinstance(source, Image.Image):
        img, fmt = source, source.format or ""
        try:
            img.load()
        except Exception as e:  # a lazily opened image can still fail here
            raise BadImageError(name, _decode_failure(e)) from e
        _check_pixels(name, img.size, max_pixels)
    else:
        data = read_source_bytes(source, name)
        img, fmt = _open_bytes(data, name, max_pixels, min_size)
    try:
        img = ImageOps.exif_transpose(img)
        return to_rgb(img, name=name), fmt
    except BadImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # broken EXIF blocks or exotic modes fail in varied ways
        raise BadImageError(name, f"cannot convert it to RGB ({e}); re-export it as PNG or JPEG") from e


def read_source_bytes(source: object, name: str) -> bytes:
    """The bytes of a path or bytes source; ``BadImageError`` (missing, unreadable, empty) naming ``name``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadImageError(name, "file not found") from None
        except IsADirectoryError:
            raise BadImageError(name, "is a folder, not an image file") from None
        except OSError as e:
            raise BadImageError(name, f"cannot read the file ({e.strerror or e})") from e
    else:
        raise BadImageError(name, f"expected a file path, image bytes or a PIL image, got {type(source).__name__}")
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    return data


def _open_bytes(
    data: bytes, name: str, max_pixels: int | None, min_size: tuple[int, int] | None
) -> tuple[Image.Image, str]:
    try:
        img = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    except UnidentifiedImageError as e:
        raise BadImageError(name, "not an image, or a format that cannot be read; convert it to PNG or JPEG") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard (its limit, or its warning turned into an error by a warnings filter).
        m = _PIXELS_IN_MESSAGE.search(str(e))
        size = f"{int(m.group(1)) / 1e6:.1f} megapixels" if m else str(e)
        raise BadImageError(name, f"image too large ({size}); the limit is {_megapixels(max_pixels)}") from e
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises SyntaxError, struct.error, ... on damaged headers
        raise BadImageError(name, _decode_failure(e)) from e
    fmt = img.format or ""
    _check_pixels(name, img.size, max_pixels)
    if min_size is not None and fmt in ("JPEG", "MPO"):
        width, height = min_size
        if _exif_orientation(img) in (5, 6, 7, 8):  # stored sideways: the draft size is pre-rotation
            width, height = height, width
        img.draft(None, (width, height))
    try:
        img.seek(0)  # animated GIF/WebP/APNG: the first frame is the picture people see as a still
        img.load()
    except MemoryError:
        raise
    except Exception as e:
        raise BadImageError(name, _decode_failure(e)) from e
    return img, fmt


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: exif_transpose will report it if it matters
        return 1


def _decode_failure(e: BaseException) -> str:
    detail = str(e) or type(e).__name__
    return f"truncated or corrupt image data ({detail}); re-export it or remove it"


def _megapixels(max_pixels: int | None) -> str:
    return "Pillow's Image.MAX_IMAGE_PIXELS" if max_pixels is None else f"{max_pixels / 1e6:.1f} megapixels"


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise BadImageError(name, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(
            name,
            f"image too large ({width}x{height}, {width * height / 1e6:.1f} megapixels); "
            f"the limit is {_megapixels(max_pixels)}: downscale it first",
        )


def to_rgb(img: Image.Image, *, name: str | None = None) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparency is composited on ``NEUTRAL_GREY``.

    16-bit and 32-bit integer images are scaled (65535 -> 255), not clipped, so a 16-bit scan keeps
    its tones; float images are scaled from [0, 1], or from their own range if they exceed it.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I" or img.mode in _FLOAT_MODES:
        return _high_depth_to_rgb(img, name or describe_source(img))
    if img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info:
        img = img.convert("RGBA")  # palette / tRNS transparency becomes a real alpha channel
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_GREY, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV


def _high_depth_to_rgb(img: Image.Image, name: str) -> Image.Image:
    arr = np.asarray(img)
    if img.mode in _FLOAT_MODES:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise BadImageError(name, "the float image holds NaN or infinite values; re-export it as 8 or 16 bit")
        lo, hi = (0.0, 1.0) if arr.min() >= 0.0 and arr.max() <= 1.0 else (float(arr.min()), float(arr.max()))
    elif img.mode in _SIXTEEN_BIT_MODES:
        lo, hi = 0.0, 65535.0
    else:  # "I": 32-bit signed; usually a 16-bit image widened, else use its own range
        arr = arr.astype(np.float64)
        lo, hi = (0.0, 65535.0) if arr.min() >= 0 and arr.max() <= 65535 else (float(arr.min()), float(arr.max()))
    span = hi - lo
    scaled = np.zeros(arr.shape) if span == 0 else (arr.astype(np.float64) - lo) * (255.0 / span)
    gray = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def image_to_tensor01(img: Image.Image, size_hw: tuple[int, int], resize: str = DEFAULT_RESIZE) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1] at exactly ``size_hw``, following the ``resize`` policy.

    ``crop`` (the default) keeps the aspect ratio and loses margins that a generation of that shape
    would not show either; see ``RESIZE_POLICIES`` for the others.
    """
    height, width = check_hw(size_hw, "size_hw")
    img = resize_image(img, (width, height), resize)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)


def resize_image(img: Image.Image, size: tuple[int, int], resize: str = DEFAULT_RESIZE) -> Image.Image:
    """RGB ``img`` at exactly ``size`` (width, height) by the ``resize`` policy, Lanczos resampling."""
    validate_resize(resize)
    img = to_rgb(img)
    width, height = size
    if img.size == (width, height):
        return img
    lanczos = Image.Resampling.LANCZOS
    if resize == "crop":
        return ImageOps.fit(img, (width, height), method=lanczos, centering=(0.5, 0.5))
    if resize == "stretch":
        return img.resize((width, height), lanczos)
    scale = min(width / img.width, height / img.height)
    inner = (max(1, min(width, round(img.width * scale))), max(1, min(height, round(img.height * scale))))
    canvas = Image.new(img.mode, (width, height), NEUTRAL_GREY)
    canvas.paste(img.resize(inner, lanczos), ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


def perceptual_hash(img: Image.Image) -> int:
    """64-bit difference hash (dHash): the image as 9x8 grey cells, one bit per left-right step.

    It survives re-encoding, resizing and small colour shifts (a few bits change) but not crops or
    flips, which is what "the same picture uploaded twice" needs. Flat images all hash to 0, so a
    near-duplicate report is a hint for a person to check, never a reason to drop an image.
    """
    gray = to_rgb(img).convert("L").resize(HASH_GRID, Image.Resampling.BOX)
    cells = np.asarray(gray, dtype=np.int16)
    bits = (cells[:, :-1] > cells[:, 1:]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes (0 = same picture, ~32 = unrelated)."""
    return (a ^ b).bit_count()


def thumbnail_png(img: Image.Image, size: int = THUMB_SIZE) -> bytes:
    """PNG bytes of ``img`` shrunk so its longest side is ``size`` (smaller images are kept as they
    are: a browser scales them up for free, a server would only add bytes)."""
    if size < 1:
        raise BankError(f"thumbnail size must be >= 1, got {size}")
    thumb = to_rgb(img).copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return buf.getvalue()


def check_hw(size_hw: tuple[int, int], what: str) -> tuple[int, int]:
    """``(height, width)`` as two positive ints, or ``BankError`` naming ``what``."""
    try:
        height, width = (int(v) for v in size_hw)
    except (TypeError, ValueError) as e:
        raise BankError(f"{what} must be (height, width), got {size_hw!r}") from e
    if height < 1 or width < 1:
        raise BankError(f"{what} must be positive, got {height}x{width}")
    return height, width
