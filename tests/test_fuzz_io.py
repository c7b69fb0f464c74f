"""Property tests (hypothesis, derandomized): the image loader and visualize on whatever they may be given.

* Valid images in many modes, sizes and formats load at their size as 8-bit RGB, pixel-exact where the
  format is lossless.
* Random byte mutations of real PNG and JPEG files either load or raise ImageLoadError, never anything
  else, and never take more than a bounded amount of memory (checked in a child process whose address
  space may grow by at most 1 GiB; the preprocessing runs there too).
* ``fm.visualize`` on random tensors (1-5 D, float/half/bfloat16/int/bool, NaN, Inf, constant, with grad)
  always gives a uint8 picture of the size its own geometry states, one tile per channel.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

import featuremaps as fm

from featuremaps.errors import ImageLoadError, RenderError

from test_image_budget import LIMITED  # a child whose address space may grow by 1 GiB at most

SRC = str(Path(fm.__file__).resolve().parent.parent)
FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=60,
                suppress_health_check=[HealthCheck.too_slow])

LOSSLESS = ("PNG", "BMP", "TIFF")
FORMATS = ("PNG", "BMP", "TIFF", "GIF", "JPEG", "WEBP")
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK")


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width), dtype=np.uint8).astype(bool))
    if mode in ("L", "P"):
        im = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        return im.convert("P") if mode == "P" else im
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32))
    raw = rng.integers(0, 256, width * height * len(mode), dtype=np.uint8).tobytes()
    return Image.frombytes(mode, (width, height), raw)  # LA, RGB, RGBA, CMYK


@FUZZ
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS), width=st.integers(1, 48),
       height=st.integers(1, 48), seed=st.integers(0, 2**16))
def test_valid_images_load_at_their_size_as_8_bit_rgb(mode, fmt, width, height, seed):
    original = make_image(mode, width, height, seed)
    buf = io.BytesIO()
    try:
        original.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format: not a valid image
    loaded = fm.load_image(buf.getvalue())
    assert loaded.mode == "RGB" and loaded.size == (width, height)
    pixels = np.asarray(loaded)
    assert pixels.dtype == np.uint8 and pixels.shape == (height, width, 3)
    if fmt in LOSSLESS and mode in ("RGB", "L", "1"):
        # what Pillow stored, read back independently of featuremaps
        expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(pixels, expected)
        if mode == "RGB":
            assert np.array_equal(pixels, np.asarray(original))


MUTATE = LIMITED + textwrap.dedent("""
    import sys
    from pathlib import Path
    from hypothesis import HealthCheck, given, settings, strategies as st
    import featuremaps as fm
    from featuremaps.errors import ImageLoadError
    from featuremaps.models import imagenet_card

    SEEDS = [p.read_bytes() for p in sorted(Path(sys.argv[1]).iterdir())]
    LIMIT = 2**22
    PRE = fm.Preprocess(imagenet_card("m", "m", None), max_pixels=LIMIT)
    where = st.one_of(st.integers(0, 96), st.integers(0, 2**20))  # the headers often, anywhere sometimes
    edit = st.tuples(st.sampled_from(["set", "insert", "delete", "cut"]), where, st.integers(0, 255))

    @settings(derandomize=True, deadline=None, database=None, max_examples=int(sys.argv[2]),
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, len(SEEDS) - 1), edits=st.lists(edit, min_size=1, max_size=6))
    def mutated_files_load_or_raise_image_load_error(seed, edits):
        data = bytearray(SEEDS[seed])
        for kind, pos, value in edits:
            pos %= max(len(data), 1)
            if kind == "set" and data:
                data[pos] = value
            elif kind == "insert":
                data[pos:pos] = bytes([value]) * (1 + value % 8)
            elif kind == "delete":
                del data[pos:pos + 1 + value % 16]
            elif kind == "cut":
                del data[pos:]
        try:
            img = fm.load_image(bytes(data), max_pixels=LIMIT)
        except ImageLoadError:
            return
        assert img.mode == "RGB" and img.size[0] * img.size[1] <= LIMIT
        try:
            x = PRE(img)
        except ImageLoadError:
            return
        assert tuple(x.shape) == (1, 3, 224, 224)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mutated_files_load_or_raise_image_load_error()
    print("peak increase (KiB):", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
""")


def test_mutated_png_and_jpeg_files_load_or_raise_image_load_error_in_bounded_memory(tmp_path):
    photo = fm.load_image(fm.sample_image("cat")).resize((64, 48))
    photo.save(tmp_path / "a.png")
    photo.save(tmp_path / "b-interlaced.png", interlace=1)
    photo.convert("RGBA").save(tmp_path / "c-rgba.png")
    photo.convert("P").save(tmp_path / "d-palette.png", transparency=0)
    photo.save(tmp_path / "e.jpg", quality=85)
    photo.save(tmp_path / "f-progressive.jpg", quality=70, progressive=True)
    photo.convert("L").save(tmp_path / "g-gray.jpg")
    proc = subprocess.run([sys.executable, "-c", MUTATE, str(tmp_path), "400"], capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    peak_kib = int(proc.stdout.strip().splitlines()[-1].split(":")[1])
    assert peak_kib < 512 * 1024


DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.int8, torch.bool)


@st.composite
def tensors(draw):
    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from(["random", "constant", "nan", "inf", "mixed"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if dtype == torch.bool:
        t = torch.rand(shape, generator=gen) > 0.5
    elif not dtype.is_floating_point:
        t = (torch.randn(shape, generator=gen) * 50).to(dtype)
    else:
        t = (torch.randn(shape, generator=gen) * draw(st.sampled_from([1e-6, 1.0, 1e4]))).to(dtype)
        if fill == "constant":
            t = torch.full(shape, draw(st.sampled_from([0.0, -3.5, 7.0])), dtype=dtype)
        elif fill in ("nan", "inf", "mixed"):
            mask = torch.rand(shape, generator=gen) < 0.3
            value = {"nan": float("nan"), "inf": float("inf"), "mixed": float("-inf")}[fill]
            t = t.masked_fill(mask, value)
            if fill == "mixed":
                t = t.masked_fill(torch.rand(shape, generator=gen) < 0.2, float("nan"))
        if draw(st.booleans()):
            t = t.requires_grad_(True)
    return t


@FUZZ
@given(t=tensors())
def test_visualize_random_tensors_gives_a_uint8_picture_of_the_stated_size(t):
    if t.ndim == 1:
        with pytest.raises(RenderError, match="expected 2 to 5 dimensions"):
            fm.visualize(t)
        return
    before = t.detach().clone()
    g = fm.visualize(t)
    a = g.array
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert a.shape[0] == g.pad + g.rows * (g.label_h + g.tile_h + g.pad)
    assert a.shape[1] == g.pad + g.cols * (g.tile_w + g.pad)
    h, w = t.shape[-2:]
    assert (g.tile_h, g.tile_w) == (h * g.scale, w * g.scale)
    channels = 1 if t.ndim == 2 else t.shape[-3] if t.ndim in (3, 4) else t.shape[1]
    assert g.n_tiles == channels and g.rows * g.cols >= channels
    assert g.to_pil().size == (a.shape[1], a.shape[0])
    assert torch.equal(t.detach(), before) or (before.is_floating_point() and torch.equal(
        t.detach().nan_to_num(), before.nan_to_num()))  # the input is never changed
    assert t.grad is None
