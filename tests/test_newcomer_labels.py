"""Labels that stay in their tiles and CLI wording for newcomers (issue #14.9)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from featuremaps.synthesis.result import fit_label, tile_images


def test_a_long_label_stays_inside_its_tile() -> None:
    w, h, pad = 24, 10, 2
    tiles = [Image.new("RGB", (w, h), (255, 0, 0)) for _ in range(3)]
    labels = ["_blocks.15._project_conv:17_and_a_very_long_suffix", "", ""]
    out = np.asarray(tile_images(tiles, cols=3, pad=pad, labels=labels))
    band_top, band_bottom = pad, pad + 12  # the label band above the first row
    first = out[band_top:band_bottom, pad:pad + w]
    assert (first != 255).any(), "the first label is drawn"
    # everything right of the first tile's band (the gap, the other tiles' empty bands) is untouched background
    assert (out[band_top:band_bottom, pad + w:] == 255).all()
    assert (out[:band_top] == 255).all()


def test_fit_label_keeps_the_end_and_fits() -> None:
    def measure(t: str) -> float:
        return 6.0 * len(t)

    text = "features.denseblock4.denselayer16.conv2:511"
    fitted = fit_label(text, 60, measure)
    assert fitted.startswith("...") and text.endswith(fitted[3:]) and measure(fitted) <= 60
    assert measure("..." + text[len(text) - len(fitted) + 2:]) > 60  # the longest tail that fits
    assert fit_label("ok", 60, measure) == "ok"


def test_cli_wording_of_real_library_errors() -> None:
    """The library's own messages, reworded with the command line's options (no Python keywords left)."""
    import pytest
    import torch
    from torch import nn

    import featuremaps as fm
    from featuremaps.cli.command import cli_wording

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(fm.FeatureMapsError) as info:  # no linear head: plain CAM cannot apply
        fm.create_cam("cam", net, layer="1")(torch.rand(1, 3, 8, 8), target=0)
    text = cli_wording(str(info.value))
    assert "fc=" not in text and "GradCAM" not in text and "--method gradcam" in text, text
    with pytest.raises(fm.FeatureMapsError) as info:  # over the capture budget
        fm.get_feature_maps(net, torch.rand(1, 3, 64, 64), max_bytes=1000)
    text = cli_wording(str(info.value))
    assert "max_bytes" not in text and "over_budget" not in text and "--max-bytes" in text, text


def test_empty_mosaic_cells_are_striped_not_a_dark_channel() -> None:
    """#14.10: 5 channels in a 3x2 mosaic; the sixth cell is visibly empty, the tiles and the gaps unchanged."""
    from featuremaps.render.grid import channel_grid

    maps = np.linspace(-1, 1, 5 * 6 * 6, dtype=np.float32).reshape(1, 5, 6, 6)  # signed: RdBu_r, black separators
    g = channel_grid(maps, ncols=3, scale=4)
    assert (g.rows, g.cols) == (2, 3)
    pad = tuple(int(v) for v in g.pad_color)
    empty = g.tile(5).reshape(-1, 3)
    colors = {tuple(int(v) for v in px) for px in empty}
    assert len(colors) == 2 and pad in colors, colors  # stripes of the separator colour and one gray
    gray = (colors - {pad}).pop()
    assert gray[0] == gray[1] == gray[2] and abs(gray[0] - int(np.mean(pad))) >= 100
    for i in range(5):  # real tiles never hold the stripes' gray
        assert not (g.tile(i).reshape(-1, 3) == gray).all(axis=1).any()
    top, left, bottom, right = g.tile_box(5)
    assert (g.array[top:bottom, left - g.pad:left] == pad).all()  # the gap before the empty cell is untouched
