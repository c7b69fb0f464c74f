"""Tests for featuremaps.io: every conversion rule and every failure mode.

All fixtures are built here in ``tmp_path`` from tiny synthetic images whose
expected pixels are computed by hand.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pytest
import torch
from PIL import Image

from featuremaps.errors import FeatureMapsError, ImageLoadError
from featuremaps.io import (
    DEFAULT_MAX_PIXELS,
    image_to_array,
    load_image,
    sample_image,
    sample_images,
    save_image,
)

SRC = Path(__file__).resolve().parents[1] / "src"

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------------------
# helpers


def px(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def check_error(excinfo: pytest.ExceptionInfo[BaseException], *names: str) -> str:
    """The error is an ImageLoadError with a one-line message naming ``names``."""
    assert excinfo.type is ImageLoadError
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    for name in names:
        assert name in message, message
    return message


def png_bytes(width: int, height: int, *, depth: int = 8, color_type: int = 2, raw: bytes = b"") -> bytes:
    """A hand-built PNG; ``raw`` is the unfiltered scanline data (may be short)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def red_corner(width: int = 40, height: int = 20, block: int = 10) -> Image.Image:
    """Blue landscape image with a red block in its top-left corner."""
    im = Image.new("RGB", (width, height), BLUE)
    im.paste(RED, (0, 0, block, block))
    return im


def mode_of(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int) -> None:
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected)), (actual, expected)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------------------
# sources


def test_sources_path_str_bytes_filelike_pil(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    data = path.read_bytes()
    pil = Image.open(path)
    sources: list[Any] = [
        path,
        str(path),
        data,
        bytearray(data),
        memoryview(data),
        io.BytesIO(data),
        pil,
        arr,
        torch.from_numpy(arr),
    ]
    for source in sources:
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (3, 2)
        np.testing.assert_array_equal(np.asarray(image), arr)
    pil.close()


def test_non_seekable_stream(tmp_path: Path) -> None:
    data = png_bytes(1, 1, raw=b"\x00" + bytes(RED))

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b: Any) -> int:
            return self._buf.readinto(b)

    assert px(load_image(cast(BinaryIO, Pipe())), 0, 0) == RED


def test_result_is_loaded_new_image_and_file_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    red_corner().save(path)
    fd_dir = Path("/proc/self/fd")
    before = len(os.listdir(fd_dir)) if fd_dir.exists() else None
    image = load_image(path)
    if before is not None:
        assert len(os.listdir(fd_dir)) == before
    os.remove(path)  # pixels are already in memory
    assert px(image, 0, 0) == RED

    original = red_corner()
    copy = original.copy()
    result = load_image(original)
    assert result is not original
    result.putpixel((0, 0), BLUE)
    assert np.array_equal(np.asarray(original), np.asarray(copy))


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(42)  # type: ignore[arg-type]
    check_error(excinfo, "int")


# ---------------------------------------------------------------------------
# EXIF orientation


# Red block in the top-left of a landscape 40x20 image; where it must end up.
@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (1, (40, 20), (2, 2)),  # as stored
        (3, (40, 20), (37, 17)),  # rotated 180: bottom-right
        (6, (20, 40), (17, 2)),  # rotated 90 clockwise: top-right
        (8, (20, 40), (2, 37)),  # rotated 90 counter-clockwise: bottom-left
    ],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_applied(
    tmp_path: Path, orientation: int, size: tuple[int, int], red_at: tuple[int, int], fmt: str
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    red_corner().save(path, format=fmt, exif=exif.tobytes(), quality=95)

    image = load_image(path)
    assert image.size == size
    assert_close(px(image, *red_at), RED, tol=40)
    # The opposite corner is blue in every orientation.
    w, h = size
    assert_close(px(image, w - 1 - red_at[0], h - 1 - red_at[1]), BLUE, tol=40)


def test_exif_orientation_on_pil_input(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "o.png"
    red_corner().save(path, exif=exif.tobytes())
    with Image.open(path) as pil:
        image = load_image(pil)
    assert image.size == (20, 40)
    assert px(image, 17, 2) == RED


# ---------------------------------------------------------------------------
# modes


def test_grayscale_modes(tmp_path: Path, no_warnings: list) -> None:
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    gray.save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.mode == "RGB"
    assert [px(image, x, 0) for x in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]

    bilevel = Image.fromarray(np.array([[False, True]]))
    assert bilevel.mode == "1"
    bilevel.save(tmp_path / "b.png")
    image = load_image(tmp_path / "b.png")
    assert [px(image, x, 0) for x in range(2)] == [(0, 0, 0), WHITE]


def test_palette_with_transparency_over_white(tmp_path: Path, no_warnings: list) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (253 * 3))
    im.putdata([0, 1, 2])
    path = tmp_path / "p.png"
    # index 0 opaque red, 1 fully transparent blue, 2 green at alpha 128
    im.save(path, transparency=bytes([255, 0, 128]))
    assert mode_of(path) == "P"

    image = load_image(path)
    assert image.mode == "RGB"
    assert px(image, 0, 0) == RED
    assert px(image, 1, 0) == WHITE
    # green (0, 255, 0) at alpha 128: 0 -> (0*128 + 255*127)/255 = 127, 255 -> 255
    assert px(image, 2, 0) == (127, 255, 127)


def test_gif_transparency_index(tmp_path: Path, no_warnings: list) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    im.putdata([0, 1])
    im.save(tmp_path / "t.gif", transparency=1)
    image = load_image(tmp_path / "t.gif")
    assert [px(image, 0, 0), px(image, 1, 0)] == [RED, WHITE]


def test_rgba_composited_over_white(tmp_path: Path, no_warnings: list) -> None:
    rgba = np.array(
        [[[255, 0, 0, 128], [100, 50, 200, 128], [10, 20, 30, 0], [10, 20, 30, 255]]],
        dtype=np.uint8,
    )
    Image.fromarray(rgba).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    # out = round((c * a + 255 * (255 - a)) / 255), by hand for a = 128:
    #   255 -> 255;  0 -> 127;  100 -> 177.2 -> 177;  50 -> 152.1 -> 152;  200 -> 227.4 -> 227
    assert px(image, 0, 0) == (255, 127, 127)
    assert px(image, 1, 0) == (177, 152, 227)
    assert px(image, 2, 0) == WHITE  # fully transparent
    assert px(image, 3, 0) == (10, 20, 30)  # opaque unchanged
    # the same array in memory gives the same picture
    assert np.array_equal(np.asarray(load_image(rgba)), np.asarray(image))


def test_la_and_premultiplied_modes(no_warnings: list) -> None:
    la = Image.new("LA", (1, 1), (0, 128))
    assert px(load_image(la), 0, 0) == (127, 127, 127)
    # premultiplied (100, 0, 0) at alpha 128 is unpremultiplied (199, 0, 0)
    rgba_pre = Image.new("RGBa", (1, 1), (100, 0, 0, 128))
    r, g, b = px(load_image(rgba_pre), 0, 0)
    assert abs(r - 227) <= 1 and g == b == 127


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_pure_colours(tmp_path: Path, fmt: str, no_warnings: list) -> None:
    im = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    im.paste((0, 0, 0, 255), (16, 0, 32, 16))  # black
    path = tmp_path / f"c.{fmt.lower()}"
    im.save(path, format=fmt, quality=95)
    assert mode_of(path) == "CMYK"

    image = load_image(path)
    assert image.mode == "RGB"
    assert_close(px(image, 4, 8), RED, tol=8)
    assert_close(px(image, 28, 8), (0, 0, 0), tol=8)


def test_other_color_spaces(no_warnings: list) -> None:
    assert px(load_image(Image.new("HSV", (1, 1), (0, 255, 255))), 0, 0) == RED
    ycbcr = Image.new("RGB", (1, 1), (10, 200, 30)).convert("YCbCr")
    assert_close(px(load_image(ycbcr), 0, 0), (10, 200, 30), tol=3)


# 16-bit values -> round(v * 255 / 65535)
U16 = [0, 257, 32768, 32896, 65535]
U16_8BIT = [0, 1, 128, 128, 255]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_file_full_range(tmp_path: Path, fmt: str, no_warnings: list) -> None:
    path = tmp_path / f"g16.{fmt.lower()}"
    Image.fromarray(np.array([U16], dtype=np.uint16)).save(path, format=fmt)
    assert mode_of(path).startswith("I;16")
    image = load_image(path)
    assert [px(image, x, 0)[0] for x in range(len(U16))] == U16_8BIT


def test_16bit_big_endian_and_I_mode(no_warnings: list) -> None:
    big = Image.frombytes("I;16B", (len(U16), 1), np.array(U16, dtype=">u2").tobytes())
    assert [px(load_image(big), x, 0)[0] for x in range(len(U16))] == U16_8BIT
    # mode I with values within 0..65535 is read as 16-bit
    as_i = Image.fromarray(np.array([U16], dtype=np.int32))
    assert as_i.mode == "I"
    assert [px(load_image(as_i), x, 0)[0] for x in range(len(U16))] == U16_8BIT


def test_I_mode_outside_16bit_range_refused() -> None:
    for values in ([-1, 5], [0, 70000]):
        with pytest.raises(ImageLoadError) as excinfo:
            load_image(Image.fromarray(np.array([values], dtype=np.int32)))
        check_error(excinfo, "0..65535")


def test_16bit_rgb_png(tmp_path: Path, no_warnings: list) -> None:
    values = np.array([[[65535, 0, 32896], [32768, 514, 257]]], dtype=">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in values)  # filter type 0 per row
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(2, 1, depth=16, color_type=2, raw=raw))
    image = load_image(path)
    assert image.mode == "RGB"
    assert px(image, 0, 0) == (255, 0, 128)
    assert px(image, 1, 0) == (128, 2, 1)


def test_float_F_mode(tmp_path: Path, no_warnings: list) -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert [px(load_image(unit), x, 0)[0] for x in range(3)] == [0, 128, 255]
    # any other range is stretched min -> 0, max -> 255 (documented)
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32))
    wide.save(tmp_path / "f.tif")
    assert [px(load_image(tmp_path / "f.tif"), x, 0)[0] for x in range(3)] == [0, 128, 255]
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)))
    check_error(excinfo, "NaN")


# ---------------------------------------------------------------------------
# arrays and tensors


def test_array_dtypes_and_shapes() -> None:
    # float in [0, 1]; values within half an 8-bit step outside round away
    floats = np.array([[0.0, 0.5, 1.0, -0.001, 1.001]], dtype=np.float32)
    assert [px(load_image(floats), x, 0)[0] for x in range(5)] == [0, 128, 255, 0, 255]
    assert [px(load_image(floats.astype(np.float64)), x, 0)[0] for x in range(5)] == [0, 128, 255, 0, 255]

    assert [px(load_image(np.array([[False, True]])), x, 0) for x in range(2)] == [(0, 0, 0), WHITE]
    u16 = np.array([U16], dtype=np.uint16)
    assert [px(load_image(u16), x, 0)[0] for x in range(len(U16))] == U16_8BIT

    hw1 = np.full((2, 3, 1), 9, dtype=np.uint8)
    assert load_image(hw1).size == (3, 2) and px(load_image(hw1), 0, 0) == (9, 9, 9)
    hw3 = np.zeros((2, 3, 3), dtype=np.float32)
    hw3[..., 0] = 1.0
    assert px(load_image(hw3), 2, 1) == RED
    # non-contiguous views are fine
    assert px(load_image(np.zeros((4, 6, 3), np.uint8)[::2, ::2]), 0, 0) == (0, 0, 0)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 2), 1.5), "[1.5, 1.5]"),
        (np.full((2, 2), 200.0), "divide by 255"),
        (np.array([[-0.5, 0.5]]), "x * std + mean"),
        (np.array([[np.nan, 0.5]]), "NaN"),
        (np.array([[np.inf, 0.5]]), "infinite"),
        (np.zeros((3, 8, 8)), "transpose(1, 2, 0)"),
        (np.zeros((8, 8, 2)), "HxWx4"),
        (np.zeros((1, 8, 8, 3)), "arr[0]"),
        (np.zeros((0, 8), np.uint8), "empty"),
        (np.full((8, 8), 70000, np.int64), "window='full'"),
        (np.zeros((8, 8), np.complex64), "complex64"),
    ],
)
def test_bad_arrays(array: np.ndarray, expected: str) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(array)
    check_error(excinfo, "array", expected)


def test_tensors() -> None:
    chw = torch.zeros(3, 6, 5, requires_grad=True)
    with torch.no_grad():
        chw[0] = 1.0  # red
        chw[:, 0, 0] = 0.5
    image = load_image(chw)
    assert image.size == (5, 6)
    assert px(image, 4, 5) == RED and px(image, 0, 0) == (128, 128, 128)

    assert np.array_equal(np.asarray(load_image(chw.half())), np.asarray(image))
    assert np.array_equal(np.asarray(load_image(chw.bfloat16())), np.asarray(image))
    assert np.array_equal(np.asarray(load_image(chw[None])), np.asarray(image))  # 1xCxHxW
    assert np.array_equal(np.asarray(load_image(chw.permute(1, 2, 0))), np.asarray(image))  # HWC

    hwc_u8 = torch.zeros(6, 5, 3, dtype=torch.uint8)
    hwc_u8[..., 2] = 255
    assert px(load_image(hwc_u8), 0, 0) == BLUE
    assert px(load_image(torch.full((4, 5), 0.5)), 0, 0) == (128, 128, 128)
    assert px(load_image(torch.ones(1, 4, 5)), 0, 0) == WHITE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensor_on_gpu() -> None:
    assert px(load_image(torch.ones(3, 4, 5, device="cuda")), 0, 0) == WHITE


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (torch.rand(3, 5, 3), "ambiguous"),
        (torch.rand(2, 3, 5, 5), "batch of 2"),
        (torch.rand(7, 5, 5), "got shape (7, 5, 5)"),
        (torch.rand(5), "got shape (5,)"),
        (torch.full((3, 5, 5), -1.0), "x * std + mean"),
        (torch.full((3, 5, 5), float("nan")), "NaN"),
        (torch.full((3, 5, 5), 1 << 20, dtype=torch.int64), "exceed 16 bits"),
        (torch.zeros(3, 5, 5, dtype=torch.complex64), "complex"),
        (torch.zeros(3, 5, 5, device="meta"), "meta"),
    ],
)
def test_bad_tensors(tensor: torch.Tensor, expected: str) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tensor)
    check_error(excinfo, "tensor", expected)


# ---------------------------------------------------------------------------
# bad files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tmp_path / "nope.png")
    check_error(excinfo, "nope.png", "file not found")


def test_missing_file_that_names_a_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageLoadError) as excinfo:
        load_image("cat")
    check_error(excinfo, "'cat'", "sample_image('cat')")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tmp_path / "photos")
    check_error(excinfo, "photos", "directory")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tmp_path / "empty.png")
    check_error(excinfo, "empty.png", "empty (0 bytes)")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(b"")
    check_error(excinfo, "bytes", "empty")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tmp_path / "notes.png")
    message = check_error(excinfo, "notes.png", "not a recognized image format", "text file")
    assert "PNG, JPEG" in message  # says what is readable


def test_html_page_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "page.jpg").write_text("<!DOCTYPE html><html><body>Forbidden</body></html>")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tmp_path / "page.jpg")
    check_error(excinfo, "page.jpg", "HTML page")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str, no_warnings: list) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    check_error(excinfo, f"cut.{fmt.lower()}", "truncated or corrupt")


def test_corrupt_header(tmp_path: Path) -> None:
    path = tmp_path / "head.png"
    path.write_bytes(png_bytes(4, 4)[:20])  # signature, then half an IHDR
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    check_error(excinfo, "head.png", "starts like a PNG file")


# ---------------------------------------------------------------------------
# decompression bombs


def test_bomb_small_limit(tmp_path: Path, no_warnings: list) -> None:
    path = tmp_path / "big.png"
    red_corner(10, 10).save(path)
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path, max_pixels=99)
    check_error(excinfo, "big.png", "10x10 = 100 pixels", "max_pixels=99", "max_pixels=None")
    assert load_image(path, max_pixels=100).size == (10, 10)
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(red_corner(10, 10), max_pixels=50)
    check_error(excinfo, "100 pixels")


@pytest.mark.parametrize(
    "size",
    [
        (10_000, 9_000),  # just over Pillow's limit: Pillow itself would only warn
        (20_000, 20_000),  # over twice the limit: Pillow itself would raise
    ],
)
def test_bomb_default_limit(tmp_path: Path, size: tuple[int, int], no_warnings: list) -> None:
    # A header that claims a huge image; no pixel data is ever allocated.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(*size))
    assert size[0] * size[1] > DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    check_error(excinfo, "bomb.png", f"{size[0]}x{size[1]}", "decompression-bomb")
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # restored


def test_bomb_limit_can_be_lifted(tmp_path: Path, no_warnings: list) -> None:
    # With no limit, Pillow's own 2x guard must not fire either: the file gets
    # as far as decoding, where its missing pixel data is reported.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20_000, 20_000))
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path, max_pixels=None)
    check_error(excinfo, "bomb.png", "truncated")
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("max_pixels", [50_000, 40_000])  # PIL would warn / raise
def test_bomb_check_inside_decoder(max_pixels: int, no_warnings: list) -> None:
    # GIF and TIFF decoders check frames and tiles against Pillow's limit while
    # loading; that limit must be max_pixels then, and both outcomes an error.
    image = red_corner()
    original_load = image.load

    def load() -> Any:
        Image._decompression_bomb_check((300, 300))  # a 90,000-pixel tile
        return original_load()

    image.load = load  # type: ignore[method-assign]
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(image, max_pixels=max_pixels)
    check_error(excinfo, "frame or tile", f"max_pixels={max_pixels:,}")
    assert load_image(image, max_pixels=None).size == (40, 20)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_pil_global_limit_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    path = tmp_path / "a.png"
    red_corner().save(path)
    assert load_image(path, max_pixels=None).size == (40, 20)
    assert Image.MAX_IMAGE_PIXELS == 1234


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_bad_max_pixels(bad: object) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(red_corner(), max_pixels=bad)  # type: ignore[arg-type]
    check_error(excinfo, "max_pixels")


# ---------------------------------------------------------------------------
# sample photos


def test_sample_images() -> None:
    names = sample_images()
    assert names == ["astronaut", "camera", "cat", "coffee"]
    for name in names:
        path = sample_image(name)
        assert path.is_file() and path.stem == name
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 256
    assert sample_image() == sample_image("cat")


def test_sample_camera_is_grayscale_as_rgb() -> None:
    arr = image_to_array(sample_image("camera"))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_unknown_sample_suggests_closest() -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        sample_image("kat")
    message = check_error(excinfo, "'kat'", "did you mean 'cat'?")
    for name in sample_images():
        assert name in message


# ---------------------------------------------------------------------------
# image_to_array and save_image


def test_image_to_array() -> None:
    arr = image_to_array(np.full((2, 3), 0.5))
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8 and arr.flags.writeable
    assert (arr == 128).all()


@pytest.mark.parametrize("name", ["out.png", "out.PNG", "out.webp"])
def test_save_lossless_round_trip(tmp_path: Path, name: str) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    dest = tmp_path / "new" / "dir" / name
    options = {"quality": 100} if name.endswith("webp") else {}
    if name.endswith("webp"):
        # lossy WebP at quality 100 is near, not exact; use a smooth image
        arr = np.tile(np.linspace(0, 255, 7, dtype=np.uint8)[None, :, None], (6, 1, 3))
    returned = save_image(arr, dest, **options)  # type: ignore[arg-type]
    assert returned == dest and dest.is_file()
    back = image_to_array(dest)
    if name.endswith("webp"):
        assert np.abs(back.astype(int) - arr).max() <= 8
    else:
        assert np.array_equal(back, arr)
    assert sorted(p.name for p in dest.parent.iterdir()) == [name]  # no temp file left


def test_save_png_keeps_alpha_and_gray(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 128
    save_image(rgba, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "RGBA" and im.getpixel((0, 0)) == (0, 0, 0, 128)
    save_image(np.full((2, 2), 1.0), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.getpixel((0, 0)) == 255


def test_save_jpeg_flattens_alpha_over_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    save_image(rgba, tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.mode == "RGB"
        assert_close(im.getpixel((8, 8)), WHITE, tol=2)
    save_image(torch.zeros(3, 16, 16), tmp_path / "b.jpeg", format="JPEG")
    assert_close(px(load_image(tmp_path / "b.jpeg"), 8, 8), (0, 0, 0), tol=2)


def test_save_format_argument_overrides_suffix(tmp_path: Path) -> None:
    save_image(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.bin", format="png")
    assert (tmp_path / "a.bin").read_bytes().startswith(b"\x89PNG")


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "a.png"
    save_image(np.zeros((2, 2, 3), np.uint8), dest)
    save_image(np.full((2, 2, 3), 255, np.uint8), dest)
    assert (image_to_array(dest) == 255).all()
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_save_failure_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "a.png"
    save_image(np.zeros((2, 2, 3), np.uint8), dest)
    before = dest.read_bytes()

    def broken_save(self: Image.Image, fp: BinaryIO, format: str | None = None, **params: Any) -> None:
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(FeatureMapsError) as excinfo:
        save_image(np.full((2, 2, 3), 255, np.uint8), dest)
    assert "a.png" in str(excinfo.value) and "No space left" in str(excinfo.value)
    assert dest.read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file

    with pytest.raises(FeatureMapsError):
        save_image(np.zeros((2, 2, 3), np.uint8), tmp_path / "new.png")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".gif"])
def test_save_lossless_raster_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    arr = np.zeros((5, 7, 3), np.uint8)
    arr[1:3, 2:6] = (200, 30, 90)  # two colours: exact even in GIF's palette
    rgba = np.dstack([arr, np.full((5, 7), 255, np.uint8)])
    dest = save_image(rgba, tmp_path / f"a{suffix}")
    assert np.array_equal(image_to_array(load_image(dest)), arr)


def test_save_svg_and_pdf_hold_the_pixels(tmp_path: Path) -> None:
    import base64
    import io as _io
    import xml.etree.ElementTree as ET

    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    root = ET.fromstring(save_image(arr, tmp_path / "a.svg").read_bytes())
    (image,) = [e for e in root.iter() if e.tag.endswith("image")]
    png = base64.b64decode(image.get("href").split(",", 1)[1])
    assert root.get("width") == "6" and np.array_equal(np.asarray(Image.open(_io.BytesIO(png))), arr)
    assert save_image(arr, tmp_path / "b.png", format="pdf").read_bytes().startswith(b"%PDF")


def test_save_errors(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(FeatureMapsError, match=r"unsupported suffix '\.heic'.*\.png"):
        save_image(arr, tmp_path / "a.heic")
    with pytest.raises(FeatureMapsError, match="unsupported format 'exr'"):
        save_image(arr, tmp_path / "a.png", format="exr")
    with pytest.raises(FeatureMapsError, match="compress_level"):
        save_image(arr, tmp_path / "a.png", compress_level=12)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(FeatureMapsError, match="directory"):
        save_image(arr, tmp_path / "d.png")
    with pytest.raises(ImageLoadError, match="array"):
        save_image(np.full((2, 2), 3.0), tmp_path / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]


# ---------------------------------------------------------------------------
# import cost


def test_import_is_cheap() -> None:
    # Import featuremaps.io without running the package __init__ (which may
    # legitimately import torch): io itself must pull in neither torch nor
    # matplotlib.
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('featuremaps'); pkg.__path__ = [{str(SRC / 'featuremaps')!r}]\n"
        "sys.modules['featuremaps'] = pkg\n"
        "import featuremaps.io\n"
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
