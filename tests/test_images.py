"""load_image turns every kind of user input into a clean RGB image, or into a one-line ImageError; and the
overlays drawn on such images keep their colours (render.overlay).

Every input is generated here (PIL, numpy or hand-built PNG chunks); nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from cbam_viz.cam.render import colorize, overlay
from cbam_viz.errors import CbamVizError
from cbam_viz.io.images import MAX_FILE_BYTES, MAX_PIXELS, ImageError, load_image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# ---------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    """`img` saved in `fmt`, as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    """Write `data` to `path` and return the path."""
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes = b"") -> bytes:
    """A PNG built chunk by chunk, so a header can declare any size without allocating its pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A random RGB image: it compresses badly, so truncating its file really cuts pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def near(actual, expected, tol: int = 0) -> bool:
    """Whether two colours agree channel by channel within `tol`."""
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def expect_error(tmp_path: Path, source, *words: str, **kwargs) -> str:
    """load_image(source) raises ImageError whose one-line message has `words` and no traceback or tmp path."""
    with pytest.raises(ImageError) as caught:
        load_image(source, **kwargs)
    message = str(caught.value)
    assert isinstance(caught.value, CbamVizError)
    assert "Traceback" not in message and "\n" not in message
    assert str(tmp_path) not in message and "/" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def check_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    """The contract every result keeps: a new, loaded RGB image of `size` with no leftover metadata."""
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB" and img.size == size
    assert img.info == {}


# ---------------------------------------------------------------- sources


def test_path_str_path_bytes_bytearray_and_file_objects_give_the_same_pixels(tmp_path):
    original = noise(24, 16)
    path = write(tmp_path / "photo.png", encode(original, "PNG"))
    data = path.read_bytes()
    with path.open("rb") as fp:
        from_file = load_image(fp)
    results = [load_image(str(path)), load_image(path), load_image(data), load_image(bytearray(data)), from_file]
    results.append(load_image(io.BytesIO(data)))
    for img in results:
        check_rgb(img, (24, 16))
        assert np.array_equal(np.asarray(img), np.asarray(original))


def test_result_is_detached_from_the_file(tmp_path):
    path = write(tmp_path / "photo.png", encode(Image.new("RGB", (8, 8), BLUE), "PNG"))
    img = load_image(path)
    path.unlink()
    assert img.getpixel((3, 3)) == BLUE
    assert img.copy().resize((4, 4)).getpixel((1, 1)) == BLUE


def test_names_in_messages_come_from_the_source_or_the_name_argument(tmp_path):
    text = b"just some words"
    with (tmp_path / "notes.jpg").open("wb") as out:
        out.write(text)
    with (tmp_path / "notes.jpg").open("rb") as fp:
        expect_error(tmp_path, fp, "notes.jpg is not an image file")
    expect_error(tmp_path, text, "image is not an image file")
    expect_error(tmp_path, io.BytesIO(text), "image is not an image file")
    message = expect_error(tmp_path, text, "upload.jpg is not an image file", name="/srv/uploads/tmp123/upload.jpg")
    assert "srv" not in message and "tmp123" not in message
    expect_error(tmp_path, text, "win.jpg", name="C:\\Users\\me\\win.jpg")


def test_odd_non_utf8_file_name(tmp_path):
    odd = os.fsdecode(b"caf\xe9 \xff\xfe odd\tname.png")  # not UTF-8: decodes to surrogate escapes
    good = write(tmp_path / odd, encode(Image.new("RGB", (5, 3), GREEN), "PNG"))
    assert load_image(str(good)).getpixel((4, 2)) == GREEN
    bad = write(tmp_path / ("broken " + odd), b"<html></html>")
    message = expect_error(tmp_path, str(bad), "broken caf? ?? odd?name.png is not an image file")
    message.encode("utf-8")  # printable anywhere: no lone surrogates left
    unicode_name = write(tmp_path / "фото 写真.png", encode(Image.new("RGB", (2, 2), RED), "PNG"))
    assert load_image(unicode_name).getpixel((0, 0)) == RED


def test_missing_file_and_folder_and_unsupported_source_types(tmp_path):
    expect_error(tmp_path, tmp_path / "nope.jpg", "nope.jpg cannot be read: No such file or directory.")
    (tmp_path / "photos").mkdir()
    expect_error(tmp_path, tmp_path / "photos", "photos is not a file.")
    with pytest.raises(TypeError):
        load_image(12345)
    with (tmp_path / "t.txt").open("w+") as text_file:
        with pytest.raises(TypeError, match="binary mode"):
            load_image(text_file)


# ---------------------------------------------------------------- size and pixel limits


def test_empty_inputs(tmp_path):
    assert expect_error(tmp_path, write(tmp_path / "x.bin", b"")) == "x.bin is empty (0 bytes)."
    expect_error(tmp_path, b"", "image is empty (0 bytes).")
    expect_error(tmp_path, io.BytesIO(b""), "is empty (0 bytes).")


def test_file_size_limit_is_checked_before_decoding(tmp_path):
    data = encode(noise(32, 32), "PNG")
    path = write(tmp_path / "big.png", data)
    kb = f"{len(data) / 1024:.1f} KB"
    assert expect_error(tmp_path, path, max_bytes=100) == f"big.png is {kb}; the limit is 100 bytes."
    expect_error(tmp_path, data, f"image is {kb}; the limit is 100 bytes.", max_bytes=100)
    expect_error(tmp_path, io.BytesIO(data), "image is larger than the 100 bytes limit.", max_bytes=100)
    assert load_image(path, max_bytes=len(data)).size == (32, 32)  # the limit itself is allowed


def test_default_size_limit_on_a_sparse_200_mb_file(tmp_path):
    path = tmp_path / "big.jpg"
    with path.open("wb") as out:
        out.truncate(200 * 1024 * 1024)  # sparse: nothing is written, os.stat still says 200 MB
    assert MAX_FILE_BYTES == 50 * 1024 * 1024
    assert expect_error(tmp_path, path) == "big.jpg is 200 MB; the limit is 50 MB."


def test_png_header_declaring_30000_by_30000_is_rejected_without_allocating(tmp_path):
    path = write(tmp_path / "bomb.png", handmade_png(30000, 30000, 8, 2))
    assert path.stat().st_size < 100
    expect_error(tmp_path, path, "bomb.png is too large", "64 megapixels")


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    assert MAX_PIXELS == 64_000_000
    path = write(tmp_path / "huge.png", handmade_png(9000, 9000, 8, 2))  # 81 MP: above ours, below PIL's guard
    assert expect_error(tmp_path, path) == "huge.png is too large: 9000×9000 pixels (limit 64 megapixels)."
    small = encode(Image.new("RGB", (20, 20)), "PNG")
    expect_error(tmp_path, small, "20×20 pixels (limit 0.000399 megapixels)", max_pixels=399)
    assert load_image(small, max_pixels=400).size == (20, 20)
    expect_error(tmp_path, np.zeros((20, 20, 3), np.uint8), "20×20 pixels", max_pixels=399)
    expect_error(tmp_path, Image.new("L", (20, 20)), "20×20 pixels", max_pixels=399)


def test_pil_decompression_bomb_warning_never_escapes(tmp_path):
    data = handmade_png(10000, 10000, 8, 0)  # 100 MP: PIL warns before our own check runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under `python -W error`: PIL's warning is raised
        expect_error(tmp_path, data, "w.png is too large", "64 megapixels", name="w.png")
    with pytest.warns(Image.DecompressionBombWarning):
        expect_error(tmp_path, data, "w.png is too large: 10000×10000 pixels", name="w.png")


# ---------------------------------------------------------------- not images, truncated and corrupt files

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
HEIC = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + b"\x00" * 64


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("notes.jpg", b"Hello, this is a plain text file.\n"),
        ("page.jpg", b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>"),
        ("logo.svg", SVG),
        ("photo.heic", HEIC),
        ("random.png", bytes(range(256)) * 4),
        ("pic.ppm", encode(Image.new("RGB", (4, 4), RED), "PPM")),  # PIL reads it; the whitelist does not
        ("icon.ico", encode(Image.new("RGB", (16, 16), RED), "ICO")),
    ],
)
def test_files_that_are_not_supported_images(tmp_path, filename, data):
    message = expect_error(tmp_path, write(tmp_path / filename, data), f"{filename} is not an image file")
    assert message.endswith("supported formats are JPEG, PNG, GIF, BMP, TIFF, WebP.")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_errors_not_padded_images(tmp_path, fmt):
    data = encode(noise(64, 64), fmt)
    path = write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    assert expect_error(tmp_path, path) == f"cut.{fmt.lower()} is truncated or corrupt."


def test_corrupt_pixel_data_with_a_valid_header(tmp_path):
    header = handmade_png(4, 4, 8, 2).split(b"IDAT")[0][:-4]  # signature and IHDR of a 4x4 RGB image
    data = header + png_chunk(b"IDAT", b"\x78\x9c" + b"not a deflate stream" * 3) + png_chunk(b"IEND", b"")
    assert expect_error(tmp_path, data, name="x.png") == "x.png is truncated or corrupt."


def test_unreadable_exif_is_ignored_like_a_viewer_does(tmp_path):
    data = encode(Image.new("RGB", (6, 4), RED), "PNG", exif=b"Exif\x00\x00XX\x00\x2a\x00\x00\x00\x08")
    img = load_image(data)
    check_rgb(img, (6, 4))
    assert img.getpixel((0, 0)) == RED


# ---------------------------------------------------------------- formats and modes


@pytest.mark.parametrize(("fmt", "tol"), [("PNG", 0), ("BMP", 0), ("TIFF", 0), ("GIF", 0), ("JPEG", 6)])
def test_supported_formats_keep_their_colours(tmp_path, fmt, tol):
    img = Image.new("RGB", (16, 16), RED)
    img.paste(BLUE, (8, 0, 16, 16))
    out = load_image(write(tmp_path / f"a.{fmt.lower()}", encode(img, fmt)))
    check_rgb(out, (16, 16))
    assert near(out.getpixel((2, 8)), RED, tol) and near(out.getpixel((13, 8)), BLUE, tol)


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow build has no WebP support")
def test_webp_lossless_with_alpha(tmp_path):
    img = Image.new("RGBA", (8, 8), (*GREEN, 255))
    img.paste((255, 0, 0, 0), (0, 0, 4, 8))
    out = load_image(write(tmp_path / "a.webp", encode(img, "WEBP", lossless=True)))
    check_rgb(out, (8, 8))
    assert out.getpixel((1, 1)) == WHITE and out.getpixel((6, 6)) == GREEN


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_comes_out_in_the_right_colours(tmp_path, fmt):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink
    cmyk.paste((255, 255, 0, 0), (8, 0, 16, 16))  # cyan + magenta: blue
    # PIL writes CMYK JPEGs inverted with an Adobe marker, as Photoshop does, and reads them back the same way
    out = load_image(write(tmp_path / f"cmyk.{fmt.lower()}", encode(cmyk, fmt)))
    check_rgb(out, (16, 16))
    assert near(out.getpixel((2, 8)), RED, 8) and near(out.getpixel((13, 8)), BLUE, 8)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = write(tmp_path / "deep.png", encode(Image.fromarray(values), "PNG"))
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    out = np.asarray(load_image(path))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255] and (out[..., 0] == out[..., 2]).all()


def test_16_bit_rgb_png(tmp_path):
    row = b"\x00" + struct.pack(">HHH", 65535, 32768, 0) + struct.pack(">HHH", 0, 0, 65535)
    out = load_image(handmade_png(2, 1, 16, 2, row))
    assert near(out.getpixel((0, 0)), (255, 128, 0), 1) and out.getpixel((1, 0)) == BLUE


def test_16_bit_tiff_and_deep_pil_modes():
    big_endian = Image.frombytes("I;16B", (3, 1), struct.pack(">HHH", 0, 32768, 65535))
    tiff = encode(Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)), "TIFF")
    int32 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert int32.mode == "I"
    for source in (big_endian, tiff, int32):
        assert [p[0] for p in np.asarray(load_image(source))[0]] == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1000, 0, 99000]], dtype=np.int32))  # beyond 16 bits: stretched
    assert np.asarray(load_image(wide))[0, :, 1].tolist() == [0, 3, 255]


def test_float_images_from_file_and_memory():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    for source in (unit, encode(unit, "TIFF")):
        assert np.asarray(load_image(source))[0, :, 0].tolist() == [0, 128, 255]
    other = Image.fromarray(np.array([[-2.0, 0.0, 2.0, np.nan]], dtype=np.float32))
    assert np.asarray(load_image(other))[0, :, 0].tolist() == [0, 128, 255, 128]


def test_rgba_transparent_area_becomes_white_and_opaque_pixels_keep_colour(tmp_path):
    img = Image.new("RGBA", (12, 4), (255, 0, 0, 0))  # red hidden under full transparency
    img.paste((0, 0, 255, 255), (4, 0, 8, 4))
    img.paste((0, 0, 0, 128), (8, 0, 12, 4))
    out = load_image(write(tmp_path / "alpha.png", encode(img, "PNG")))
    check_rgb(out, (12, 4))
    assert out.getpixel((1, 1)) == WHITE
    assert out.getpixel((5, 1)) == BLUE
    assert near(out.getpixel((9, 1)), (127, 127, 127), 1)


def test_gray_with_alpha_and_rgb_with_transparent_colour(tmp_path):
    la = Image.new("LA", (4, 2), (0, 0))
    la.paste((50, 255), (2, 0, 4, 2))
    out = load_image(encode(la, "PNG"))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((3, 1)) == (50, 50, 50)
    rgb = Image.new("RGB", (4, 2), GREEN)
    rgb.paste(RED, (0, 0, 2, 2))
    out = load_image(encode(rgb, "PNG", transparency=RED))  # tRNS chunk: pure red means transparent
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((3, 1)) == GREEN


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(tmp_path, fmt):
    pal = Image.new("P", (8, 4), 0)
    pal.putpalette([*RED, *BLUE] + [0] * 762)  # index 0 (red) is the transparent one
    pal.paste(1, (4, 0, 8, 4))
    out = load_image(write(tmp_path / f"pal.{fmt.lower()}", encode(pal, fmt, transparency=0)))
    check_rgb(out, (8, 4))
    assert out.getpixel((1, 1)) == WHITE and out.getpixel((6, 2)) == BLUE


def test_palette_alpha_and_pa_images_in_memory():
    pal = Image.new("P", (2, 1))
    pal.putpalette([*RED, 0, *BLUE, 255], rawmode="RGBA")
    pal.putpixel((1, 0), 1)
    assert load_image(pal).getpixel((0, 0)) == WHITE and load_image(pal).getpixel((1, 0)) == BLUE
    pa = Image.new("PA", (1, 1), (0, 0))
    assert load_image(pa).getpixel((0, 0)) == WHITE


def test_palette_without_transparency():
    pal = Image.new("P", (4, 4), 2)
    pal.putpalette([0, 0, 0, 0, 0, 0, 10, 200, 30] + [0] * 759)
    assert load_image(encode(pal, "PNG")).getpixel((2, 2)) == (10, 200, 30)


def test_bilevel_and_grayscale(tmp_path):
    bits = Image.new("1", (8, 8), 0)
    bits.paste(1, (0, 0, 4, 8))
    out = load_image(write(tmp_path / "bits.png", encode(bits, "PNG")))
    check_rgb(out, (8, 8))
    assert out.getpixel((1, 1)) == WHITE and out.getpixel((6, 6)) == BLACK
    gray = load_image(write(tmp_path / "gray.png", encode(Image.new("L", (3, 3), 77), "PNG")))
    assert gray.getpixel((1, 1)) == (77, 77, 77)


@pytest.mark.parametrize(
    ("mode", "value", "expected", "tol"),
    [("YCbCr", (76, 85, 255), RED, 3), ("HSV", (85, 255, 255), GREEN, 0), ("LAB", (255, 128, 128), WHITE, 3)],
)
def test_other_colour_spaces(mode, value, expected, tol):
    assert near(load_image(Image.new(mode, (2, 2), value)).getpixel((0, 0)), expected, tol)


# ---------------------------------------------------------------- frames and orientation


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 6), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_image(write(tmp_path / "anim.gif", data))
    check_rgb(out, (10, 6))
    assert out.getpixel((5, 3)) == RED


def test_multipage_tiff_and_mpo_give_the_first_page(tmp_path):
    pages = [Image.new("RGB", (6, 6), BLUE), Image.new("RGB", (6, 6), RED)]
    out = load_image(write(tmp_path / "pages.tif", encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])))
    assert out.getpixel((3, 3)) == BLUE
    mpo = encode(pages[0], "MPO", save_all=True, append_images=pages[1:])  # stereo camera files
    assert near(load_image(mpo).getpixel((3, 3)), BLUE, 6)


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [(6, (39, 0)), (8, (0, 79))],  # 6: turn 90° clockwise to display; 8: counter-clockwise
)
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 16, 16))  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_image(write(tmp_path / "phone.jpg", encode(stored, "JPEG", quality=95, exif=exif)))
    check_rgb(out, (40, 80))
    assert near(out.getpixel(corner), RED, 12)
    assert near(out.getpixel((39 - corner[0], 79 - corner[1])), BLUE, 12)


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", [(1, 1), (10000, 8), (8, 10000)])
def test_extreme_sizes(tmp_path, size):
    img = Image.new("RGB", size, GREEN)
    img.putpixel((size[0] - 1, size[1] - 1), RED)
    out = load_image(write(tmp_path / "s.png", encode(img, "PNG")))
    check_rgb(out, size)
    assert out.getpixel((size[0] - 1, size[1] - 1)) == RED


# ---------------------------------------------------------------- arrays and PIL images


def test_numpy_arrays_as_gradio_hands_them_over():
    gray = np.full((3, 5), 40, np.uint8)
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[..., 1] = 200
    rgba = np.zeros((3, 5, 4), np.uint8)
    rgba[:, :, 0] = 255
    rgba[:, 3:, 3] = 255  # right part opaque red, left part transparent
    assert load_image(gray).getpixel((4, 2)) == (40, 40, 40)
    assert load_image(gray[:, :, None]).getpixel((0, 0)) == (40, 40, 40)
    out = load_image(rgb)
    check_rgb(out, (5, 3))
    rgb[...] = 0  # the image does not share memory with the caller's array
    assert out.getpixel((2, 1)) == (0, 200, 0)
    out = load_image(rgba)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((4, 2)) == RED
    assert load_image(np.zeros((4, 6, 3), np.uint8)[::2, ::2]).size == (3, 2)  # non-contiguous view


@pytest.mark.parametrize(
    "array",
    [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((4,), np.uint8), np.zeros((0, 4), np.uint8)],
)
def test_arrays_that_are_not_images(tmp_path, array):
    expect_error(tmp_path, array, "frame is not an image array", "expected uint8", name="frame")


def test_pil_image_input_is_not_modified_and_lazy_files_are_checked(tmp_path):
    original = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = load_image(original)
    assert out is not original and original.mode == "RGBA" and original.getpixel((0, 0)) == (255, 0, 0, 0)
    assert out.getpixel((0, 0)) == WHITE
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "lazy.jpg", encode(Image.new("RGB", (20, 10), RED), "JPEG", exif=exif))
    with Image.open(path) as lazy:
        assert load_image(lazy).size == (10, 20)
    cut = write(tmp_path / "cut.jpg", encode(noise(64, 64), "JPEG")[:1500])
    with Image.open(cut) as lazy:
        expect_error(tmp_path, lazy, "cut.jpg is truncated or corrupt.")


def test_pil_images_are_converted_to_rgb_as_files_are():
    img = Image.new("RGBA", (5, 2), (0, 0, 255, 255))
    img.putpixel((0, 0), (0, 255, 0, 0))
    arr = np.asarray(load_image(img))
    assert arr.shape == (2, 5, 3) and arr.dtype == np.uint8
    assert arr[0, 0].tolist() == list(WHITE) and arr[1, 4].tolist() == list(BLUE)
    assert np.asarray(load_image(Image.new("L", (1, 1), 9))).tolist() == [[[9, 9, 9]]]


# ------------------------------------------------------------------------------------------------ overlays
def test_opacity_0_gives_the_image_unchanged_and_1_the_colormap():
    """grad-cam's show_cam_on_image divided the blend by its maximum: a dark photo (mean 25) came back at mean 255
    at opacity 0, and a red pixel turned magenta under the colormap's blue."""
    rng = np.random.default_rng(0)
    dark = Image.fromarray(rng.integers(0, 50, (30, 40, 3), dtype=np.uint8))
    heat = rng.random((30, 40)).astype(np.float32)
    assert np.array_equal(np.asarray(overlay(dark, heat, 0.0)), np.asarray(dark))
    assert np.array_equal(np.asarray(overlay(dark, heat, 1.0, "viridis")), colorize(heat, "viridis"))
    half = np.asarray(overlay(dark, heat, 0.5), dtype=np.int16)
    assert np.abs(half - (np.asarray(dark, np.int16) + colorize(heat).astype(np.int16)) / 2).max() <= 1

    red = Image.new("RGB", (1, 1), RED)
    assert overlay(red, np.zeros((1, 1), np.float32), 0.0).getpixel((0, 0)) == RED
    assert overlay(red, np.ones((1, 1), np.float32), 0.0).getpixel((0, 0)) == RED
    low = overlay(red, np.zeros((1, 1), np.float32), 0.5).getpixel((0, 0))  # jet's dark blue at 0
    assert low == (128, 0, 64), low  # half red, half (0, 0, 128): not rescaled to magenta (255, 0, 128)


def test_overlay_keeps_grad_cams_colours_and_resizes_the_heatmap():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from cbam_viz.cam.render import colormap_lut

    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for name in ("jet", "inferno", "coolwarm"):
        # heatmap only: grad-cam's maximum rescale is a no-op where the colormap reaches 255 in some channel
        theirs = show_cam_on_image(np.zeros((8, 8, 3), np.float32), heat, True, colormap_lut(name), image_weight=0.0)
        assert np.array_equal(colorize(heat, name), theirs), name
        assert np.array_equal(np.asarray(overlay(Image.new("RGB", (8, 8)), heat, 1.0, name)), theirs), name
    big = overlay(Image.new("RGB", (32, 16), WHITE), np.eye(4, dtype=np.float32), 0.7)
    assert big.size == (32, 16) and big.mode == "RGB"
    with pytest.raises(ValueError, match="opacity must be from 0 to 1"):
        overlay(Image.new("RGB", (2, 2)), np.zeros((2, 2), np.float32), 1.5)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        overlay(Image.new("RGB", (2, 2)), np.zeros((2, 2), np.float32), 0.5, "nope")
