"""The bad-input corpus: every kind of file a public demo gets, generated here (nothing is downloaded).

`write_corpus(folder)` writes one file per kind and returns `Entry`s saying what each must give: `error` is a
substring of the one-line message it must be refused with, or None for a file that decodes; then
`reference(entry)` is the RGB image a viewer displays for it, built independently of `cbam_viz.io.images` where the
kind is about the decoding itself (EXIF rotation, transparency, first frame, first page), so the API's, the
page's and the export's answers can be checked against `compare(reference)`.

    python -m tests.badfiles DIR      # write the corpus into DIR (e.g. to try the export CLI or the page by hand)
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import random_image

HUGE_BYTES = 200 * 1024 * 1024
NOT_AN_IMAGE = "is not an image file"
CORRUPT = "is truncated or corrupt"
TOO_LARGE = "is too large"  # PIL's own bomb guard fires first for these, before the size is at hand


@dataclass
class Entry:
    """One corpus file: its kind, name (bytes when it is not UTF-8), and what it must give."""

    kind: str
    name: str | bytes
    error: str | None  # substring of the message (after the label), None when the file decodes
    make: Callable[[Path], None]
    expect: Callable[[Path], Image.Image] | None = None  # the displayed RGB image, when decoding is the point
    sparse: bool = False  # the 200 MB file: no bytes are written, os.stat still says 200 MB
    path: Path = field(default=Path())

    @property
    def label(self) -> str:
        """The name as messages show it (the base name; undecodable bytes as '?')."""
        text = os.fsdecode(self.name) if isinstance(self.name, bytes) else self.name
        base = text.replace("\\", "/").rsplit("/", 1)[-1]
        return "".join(c if c.isprintable() else "?" for c in base)

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------------------------------------- helpers
def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes = b"") -> bytes:
    """A PNG built chunk by chunk, so its header can declare any size and depth."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(
        b"IEND", b""
    )


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """Structured content (noise plus a bright block) so heatmaps differ from image to image; any size."""
    if min(size) > 10:
        return random_image(seed, size)
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 120).astype(np.uint8)
    x = int(rng.integers(0, max(1, size[0] - 10)))
    y = int(rng.integers(0, max(1, size[1] - 10)))
    pixels[y : y + 10, x : x + 10] = 255
    return Image.fromarray(pixels)


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Incompressible pixels: cutting the file in half really cuts pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def data(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def saved(image: Image.Image, fmt: str, **params) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(encode(image, fmt, **params))


def decoded(path: Path) -> Image.Image:
    """The file's first frame as PIL gives it in RGB, without any EXIF handling (for independent references)."""
    with Image.open(path) as im:
        im.seek(0)
        return im.convert("RGB")


def over_white(rgba: np.ndarray) -> Image.Image:
    """An RGBA array composited over white, in numpy (independent of PIL's paste)."""
    alpha = rgba[..., 3:4].astype(np.float64) / 255
    rgb = rgba[..., :3] * alpha + 255 * (1 - alpha)
    return Image.fromarray(np.round(rgb).astype(np.uint8))


class Malicious:
    """A pickle that would create MARKER if anything ever unpickled it (it is saved with a .png name)."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------- the kinds
def _rgba() -> tuple[Image.Image, np.ndarray]:
    arr = np.asarray(picture(11).convert("RGBA")).copy()
    arr[:, :30, 3] = 0  # a fully transparent band
    arr[:, 30:50, 3] = 128  # half transparent
    return Image.fromarray(arr), arr


def _palette_trns() -> tuple[Image.Image, np.ndarray]:
    im = picture(12).quantize(16)
    im.info["transparency"] = 0  # palette index 0 is transparent
    palette = np.array(im.getpalette()[: 16 * 3], dtype=np.uint8).reshape(16, 3)
    idx = np.asarray(im)
    rgba = np.concatenate([palette[idx], np.where(idx == 0, 0, 255).astype(np.uint8)[..., None]], axis=2)
    return im, rgba


def _gif_frames() -> list[Image.Image]:
    first = Image.new("RGB", (80, 60), (20, 40, 200))
    first.paste((250, 250, 0), (8, 10, 30, 34))
    second = Image.new("RGB", (80, 60), (200, 30, 30))
    second.paste((255, 255, 255), (50, 30, 76, 56))
    return [first, second]


def _tiff_pages() -> list[Image.Image]:
    return [picture(14, (70, 50)), picture(15, (70, 50))]


def _exif_rotated(path: Path) -> None:
    stored = picture(16, (96, 64)).transpose(Image.Transpose.ROTATE_90)  # stored 64x96, displayed 96x64
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90° clockwise to display"
    path.write_bytes(encode(stored, "JPEG", quality=95, exif=exif))


def _exif_expected(path: Path) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(decoded(path)), k=-1)))  # 90° clockwise


def _rgb16(path: Path) -> None:
    rng = np.random.default_rng(8)
    arr = (rng.random((48, 64, 3)) * 40000).astype(">u2")
    arr[10:20, 10:30] = 65535
    rows = b"".join(b"\x00" + arr[y].tobytes() for y in range(arr.shape[0]))
    path.write_bytes(handmade_png(64, 48, 16, 2, rows))


def _gray16(path: Path) -> None:
    rng = np.random.default_rng(9)
    arr = (rng.random((50, 70)) * 30000).astype(np.uint16)
    arr[5:25, 40:60] = 65535
    Image.fromarray(arr).save(path, "PNG")


def _huge(path: Path) -> None:
    with path.open("wb") as out:
        out.truncate(HUGE_BYTES)


def _tiff_bomb(path: Path) -> None:
    """A TIFF whose header says 100000×100000 with a single strip of a few bytes."""
    entries = [(256, 4, 1, 100000), (257, 4, 1, 100000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 100000), (279, 4, 1, 4)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
        for tag, typ, count, value in entries
    ) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 12) + b"\x00\x00\x00\x00" + ifd)


def _pickle(marker: Path) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        Malicious.marker = str(marker)
        path.write_bytes(pickle.dumps(Malicious()))

    return make


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="9"/></svg>'
HEIC = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + b"\x00" * 64
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script><img src='x.jpg'></body></html>\n"
XSS_NAME = "<img src=x onerror=alert(1)>.png"


def entries(marker: Path) -> list[Entry]:
    """Every kind, in a fixed order; `marker` is the file the pickle would create if it were ever run."""
    rgba, rgba_arr = _rgba()
    palette, palette_rgba = _palette_trns()
    frames, pages = _gif_frames(), _tiff_pages()
    jpeg, png = encode(noise((96, 96), 1), "JPEG", quality=90), encode(noise((96, 96), 2), "PNG")
    gif = encode(noise((64, 64), 3), "GIF")
    float_tiff = Image.fromarray((np.asarray(picture(19).convert("L"), dtype=np.float32) / 255))
    return [
        # refused, with a clear message
        Entry("empty", "empty.jpg", "is empty (0 bytes)", data(b"")),
        Entry("truncated-jpeg", "truncated.jpg", CORRUPT, data(jpeg[: len(jpeg) // 2])),
        Entry("truncated-png", "truncated.png", CORRUPT, data(png[: len(png) // 2])),
        Entry("truncated-gif", "truncated.gif", CORRUPT, data(gif[: len(gif) // 2])),
        Entry("jpeg-magic-only", "magic.jpg", NOT_AN_IMAGE, data(b"\xff\xd8\xff\xe0")),
        Entry("text-as-jpg", "notes.jpg", NOT_AN_IMAGE, data(b"Dear user, this is a plain text file.\n" * 4)),
        Entry("html-as-jpg", "page.jpg", NOT_AN_IMAGE, data(HTML)),
        Entry("html-in-name", XSS_NAME, NOT_AN_IMAGE, data(HTML)),
        Entry("png-bomb", "bomb.png", TOO_LARGE, data(handmade_png(30000, 30000, 8, 2))),
        Entry("tiff-bomb", "bomb.tif", TOO_LARGE, _tiff_bomb),
        Entry("200mb", "huge.jpg", "is 200 MB; the limit is 50 MB", _huge, sparse=True),
        Entry("svg", "vector.svg", NOT_AN_IMAGE, data(SVG)),
        Entry("heic", "photo.heic", NOT_AN_IMAGE, data(HEIC)),
        Entry("ico", "icon.ico", NOT_AN_IMAGE, saved(picture(20, (32, 32)), "ICO")),
        Entry("pdf", "scan.pdf", NOT_AN_IMAGE, data(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")),
        Entry("pickle-as-png", "pickle.png", NOT_AN_IMAGE, _pickle(marker)),
        # decoded: the answer must be the models' answer for what a viewer shows
        Entry("cmyk-jpeg", "cmyk.jpg", None, saved(picture(1).convert("CMYK"), "JPEG", quality=95)),
        Entry("rgb-16bit-png", "rgb16.png", None, _rgb16),
        Entry("gray-16bit-png", "gray16.png", None, _gray16),
        Entry("rgba-transparent", "rgba.png", None, saved(rgba, "PNG"), lambda p: over_white(rgba_arr)),
        Entry("palette-transparent", "palette.png", None, saved(palette, "PNG", transparency=0),
              lambda p: over_white(palette_rgba)),
        Entry("gray-alpha", "gray_alpha.png", None, saved(picture(21).convert("LA"), "PNG")),
        Entry("bilevel", "bilevel.png", None, saved(picture(2).convert("1"), "PNG")),
        Entry("grayscale", "gray.jpg", None, saved(picture(3).convert("L"), "JPEG", quality=95)),
        Entry("animated-gif", "animated.gif", None,
              saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0),
              lambda p: frames[0].copy()),
        Entry("multipage-tiff", "pages.tif", None, saved(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
              lambda p: pages[0].copy()),
        Entry("float-tiff", "float.tif", None, saved(float_tiff, "TIFF")),
        Entry("exif-rotated", "rotated.jpg", None, _exif_rotated, _exif_expected),
        Entry("corrupt-exif", "bad_exif.png", None,
              saved(picture(4), "PNG", exif=b"Exif\x00\x00XX\x00\x2a\x00\x00\x00\x08")),
        Entry("1x1", "one.png", None, saved(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")),
        Entry("10000x8", "wide.png", None, saved(picture(5, (10000, 8)), "PNG")),
        Entry("8x10000", "tall.png", None, saved(picture(6, (8, 10000)), "PNG")),
        Entry("webp", "photo.webp", None, saved(picture(7), "WEBP", quality=90)),
        Entry("bmp", "legacy.bmp", None, saved(picture(22), "BMP")),
        Entry("png-named-jpg", "really_png.jpg", None, saved(picture(23), "PNG")),
        Entry("path-like-name", "..\\..\\x.jpg", None, saved(picture(24), "JPEG", quality=95)),
        Entry("dash-name", "-rf.png", None, saved(picture(25), "PNG")),
        Entry("non-utf8-name", b"caf\xe9 \xff.png", None, saved(picture(26), "PNG")),
    ]


def write_corpus(folder: str | os.PathLike, marker: str | os.PathLike | None = None) -> list[Entry]:
    """Write every kind into `folder` (created) and return the entries with their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = Path(marker) if marker else folder.parent / "pickle-was-run"
    written = []
    for entry in entries(marker):
        name = entry.name if isinstance(entry.name, str) else os.fsdecode(entry.name)
        entry.path = folder / name
        entry.make(entry.path)
        written.append(entry)
    return written


def reference(entry: Entry) -> Image.Image:
    """The RGB image a viewer shows for a decodable entry (independent where the kind is about decoding)."""
    assert entry.ok, entry.kind
    if entry.expect is not None:
        return entry.expect(entry.path)
    from cbam_viz.io.images import load_image

    return load_image(entry.path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.badfiles DIR")
    for item in write_corpus(sys.argv[1]):
        print(f"{item.kind:22} {item.label!r:40} {'decodes' if item.ok else 'refused: ' + item.error}")
