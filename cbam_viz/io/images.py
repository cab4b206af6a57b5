"""Turn any user-supplied image (path, bytes, file, PIL image or array) into a clean, fully loaded RGB PIL image.

Every image the web app, the export CLI or the tests feed to a model passes through `load_image`, so the
limits live here: file size is checked before anything is decoded, the pixel count is checked from the
header before any pixel data is, only whitelisted formats are opened, and whatever goes wrong comes back
as a one-line `ImageError` that names the file by its base name only.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cbam_viz.errors import CbamVizError

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 64_000_000

# Formats PIL may try, in this order. Camera MPO files are JPEGs to PIL's JPEG opener, so "JPEG" covers them.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
_FORMAT_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP"

EXIF_ORIENTATION = 0x0112  # the EXIF tag saying how the stored pixels are turned to show the photo upright

# Modes with more than 8 bits per sample; they are scaled to 8-bit grayscale by their value range.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(CbamVizError):
    """An input that cannot become an RGB image: its message names the file and says why, in one line."""


def load_image(
    source: str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image | np.ndarray,
    *,
    name: str | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Load `source` as a new RGB image oriented as a viewer shows it, or raise ImageError saying why not.

    `source` is a path, the file's bytes (never a path), a binary file object (read from its current
    position), a PIL image or a uint8 HxW/HxWx3/HxWx4 array. `name` replaces the base name in messages.
    """
    if isinstance(source, Image.Image):
        label = _label(name or getattr(source, "filename", None))
        with _decoding(label, max_pixels):
            return _finish(source, label, max_pixels)
    if isinstance(source, np.ndarray):
        label = _label(name)
        return _finish(_from_array(source, label), label, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        label = _label(name or source)
        with _open_file(source, label, max_bytes) as fp:
            return _decode(fp, label, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        label = _label(name)
        _check_size(len(source), label, max_bytes)
        return _decode(io.BytesIO(source), label, max_pixels)
    if hasattr(source, "read"):
        label = _label(name or getattr(source, "name", None))
        data = source.read(max_bytes + 1)  # never more than one byte past the limit
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("load_image needs a file object opened in binary mode")
        if len(data) > max_bytes:
            raise ImageError(f"{label} is larger than the {_format_bytes(max_bytes)} limit.")
        _check_size(len(data), label, max_bytes)
        return _decode(io.BytesIO(data), label, max_pixels)
    raise TypeError(f"load_image cannot read an image from a {type(source).__name__}")


def _label(name: object) -> str:
    """The name shown in messages: the base name only (no server path), unprintable characters as '?'."""
    if isinstance(name, (os.PathLike, bytes)):
        name = os.fsdecode(name)
    if not isinstance(name, str):
        return "image"
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c if c.isprintable() else "?" for c in base) or "image"


def _format_bytes(size: int) -> str:
    """A byte count as a person reads it: '512 bytes', '3.5 KB', '200 MB'."""
    if size < 1024:
        return f"{size} bytes"
    value, unit = (size / 1024, "KB") if size < 1024**2 else (size / 1024**2, "MB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def _check_size(size: int, label: str, max_bytes: int) -> None:
    """Reject empty and oversized inputs before a byte of them is decoded."""
    if size == 0:
        raise ImageError(f"{label} is empty (0 bytes).")
    if size > max_bytes:
        raise ImageError(f"{label} is {_format_bytes(size)}; the limit is {_format_bytes(max_bytes)}.")


def _open_file(path: str | os.PathLike[str], label: str, max_bytes: int) -> BinaryIO:
    """Open `path` for reading once os.stat shows a regular file within the size limit."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{label} is not a file.")
        _check_size(info.st_size, label, max_bytes)
        return open(path, "rb")  # the caller closes it
    except OSError as err:  # the message keeps the reason, not the path
        raise ImageError(f"{label} cannot be read: {err.strerror or 'unknown error'}.") from err


@contextlib.contextmanager
def _decoding(label: str, max_pixels: int) -> Iterator[None]:
    """Turn whatever PIL raises while identifying or decoding into a one-line ImageError."""
    try:
        yield
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(
            f"{label} is not an image file (or is in a format we cannot read): "
            f"supported formats are {_FORMAT_NAMES}."
        ) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # PIL's own guard fired first (its limits sit above ours by default), so no size is at hand.
        raise ImageError(f"{label} is too large to decode safely (limit {max_pixels / 1e6:g} megapixels).") from err
    except Exception as err:  # PIL's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"{label} is truncated or corrupt.") from err


def _decode(fp: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Identify the file among FORMATS only, then finish it like any other image."""
    with _decoding(label, max_pixels), Image.open(fp, formats=FORMATS) as im:
        return _finish(im, label, max_pixels)


def _finish(im: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Check the header's pixel count, decode the first frame, apply EXIF orientation, convert to RGB."""
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(f"{label} is too large: {width}×{height} pixels (limit {max_pixels / 1e6:g} megapixels).")
    im.load()  # raises on truncated data: ImageFile.LOAD_TRUNCATED_IMAGES is deliberately left False
    rgb = _to_rgb(_upright(im))
    rgb.info.clear()  # drop EXIF/ICC/transparency metadata that no longer describes these pixels
    return rgb


def _upright(im: Image.Image) -> Image.Image:
    """A copy of `im` turned as its EXIF orientation says; unreadable EXIF is ignored, as viewers ignore it."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF blocks raise anything from SyntaxError to struct.error
        return im.copy()


def stored_orientation(path: str | os.PathLike[str]) -> tuple[int, tuple[int, int]]:
    """(EXIF orientation, (W, H) as stored) of an image file, from its header: the turn `load_image` gives its
    pixels (1 = none; also when the EXIF block is unreadable) and the size before that turn."""
    with Image.open(path, formats=FORMATS) as im:
        try:
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
        except Exception:  # malformed EXIF: the loader ignores it too
            orientation = 1
        return (orientation if 1 <= orientation <= 8 else 1), im.size


def _from_array(arr: np.ndarray, label: str) -> Image.Image:
    """A PIL image of a uint8 HxW, HxWx1, HxWx3 or HxWx4 array (grayscale, RGB or RGBA)."""
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not shape_ok or 0 in arr.shape:
        raise ImageError(
            f"{label} is not an image array: expected uint8 HxW, HxWx3 or HxWx4, got {arr.dtype} {arr.shape}."
        )
    return Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def _to_rgb(im: Image.Image) -> Image.Image:
    """`im` in mode RGB as a viewer shows it: transparency composited over white, deep modes scaled to 8 bits."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _scale_to_l(im)
    if im.has_transparency_data:  # alpha channel, palette alpha or a tRNS colour
        rgba = im.convert("RGBA")
        white = Image.new("RGB", im.size, "white")
        white.paste(rgba, mask=rgba)  # blends by alpha, so fully transparent pixels come out white
        return white
    return im if im.mode == "RGB" else im.convert("RGB")


def _scale_to_l(im: Image.Image) -> Image.Image:
    """An 8-bit L image of a 16/32-bit integer or float one, scaled by its type's range rather than clipped.

    Integers in 0..65535 (PIL's I;16 modes, and "I" used as a 16-bit container) map 65535 to 255 and float
    images in 0..1 map 1.0 to 255; data outside those ranges is stretched from its own minimum to maximum.
    """
    values = np.nan_to_num(np.array(im, dtype=np.float32), copy=False)
    low, high = float(values.min()), float(values.max())
    if im.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    elif im.mode != "F" and low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8))
