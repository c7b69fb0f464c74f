"""ColorScale: every renderer draws the same pixels from ``color_scale=ColorScale(...)`` as from the keywords.

The keyword spelling is the renderers' original interface (its behaviour is covered by test_render.py); here
the scale object is an independent path to the same settings, so equal arrays prove it reaches every step
(normalization mode and bounds, percentiles, colormap, NaN colour). Settings are chosen so that each one
changes the picture (checked against the renderer's defaults), otherwise equality would prove nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featuremaps.errors import RenderError
from featuremaps.render import (
    ColorScale,
    channel_grid,
    overlay,
    overlay_array,
    strips,
    vector_strip,
    volume_mip,
    volume_montage,
)

GEN = torch.Generator().manual_seed(0)
MAPS = torch.randn(2, 6, 9, 9, generator=GEN)
MAPS[0, 1, 2, 3] = float("nan")
SEQ = torch.randn(1, 5, 40, generator=GEN)
VEC = torch.randn(3, 16, generator=GEN)
VOL = torch.randn(1, 3, 5, 6, 7, generator=GEN)
IMAGE = np.full((20, 30, 3), 90, np.uint8)
HEAT = torch.randn(5, 5, generator=GEN)
HEAT[0, 0] = float("inf")

SETTINGS = [
    {"norm": "robust", "percentiles": (10.0, 80.0), "cmap": "magma", "nan_color": (0, 255, 0)},
    {"norm": "layer", "vmin": -0.5, "vmax": 1.5, "cmap": "gray"},
    {"norm": "channel", "vmax": 1.0, "nan_color": (255, 0, 255)},
    {"norm": "symmetric", "vmax": 0.7},
]

RENDERERS = {
    "channel_grid": lambda **kw: channel_grid(MAPS, scale=1, **kw).array,
    "channel_grid all samples": lambda **kw: channel_grid(MAPS, sample="all", channels=3, order="var", **kw).array,
    "strips": lambda **kw: strips(SEQ, **kw).array,
    "vector_strip": lambda **kw: vector_strip(VEC, **kw).array,
    "volume_montage": lambda **kw: volume_montage(VOL, axis="height", channel=1, **kw).array,
    "volume_mip": lambda **kw: volume_mip(VOL, axis=2, channels=2, order="max", **kw).array,
    "overlay_array": lambda **kw: overlay_array(IMAGE, HEAT, alpha=0.7, **kw)[0],
    "overlay": lambda **kw: np.asarray(overlay(IMAGE, HEAT, alpha=0.7, **kw)),
}


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s["norm"])
@pytest.mark.parametrize("name", list(RENDERERS))
def test_both_spellings_draw_identical_pixels(name, settings):
    render = RENDERERS[name]
    by_keywords = render(**settings)
    by_object = render(color_scale=ColorScale(**settings))
    assert by_object.dtype == np.uint8 and by_object.shape == by_keywords.shape
    np.testing.assert_array_equal(by_object, by_keywords)
    assert not np.array_equal(by_keywords, render()), "these settings should change the picture"


def test_the_default_scale_is_the_default_picture():
    np.testing.assert_array_equal(channel_grid(MAPS, color_scale=ColorScale()).array, channel_grid(MAPS).array)
    # an overlay's default mode is "layer"; ColorScale(norm="layer") spells it
    np.testing.assert_array_equal(overlay_array(IMAGE, HEAT, color_scale=ColorScale(norm="layer"))[0],
                                  overlay_array(IMAGE, HEAT)[0])


def test_a_scale_and_keywords_together_are_refused():
    with pytest.raises(RenderError, match="either as color_scale=ColorScale"):
        channel_grid(MAPS, color_scale=ColorScale(cmap="gray"), cmap="magma")
    with pytest.raises(RenderError, match="either as color_scale=ColorScale"):
        overlay(IMAGE, HEAT, color_scale=ColorScale(), vmin=0.0)


def test_bad_scales_say_what_is_wrong():
    with pytest.raises(RenderError, match="norm='loud' is not a normalization mode"):
        ColorScale(norm="loud")
    with pytest.raises(RenderError, match=r"percentiles=.* must be a \(low, high\) pair"):
        ColorScale(percentiles=(1.0,))
    with pytest.raises(RenderError, match="color_scale must be a ColorScale, got dict"):
        strips(SEQ, color_scale={"cmap": "gray"})


def test_a_scale_is_a_frozen_value():
    scale = ColorScale(nan_color=[1, 2, 3], percentiles=[5, 95])
    assert scale.nan_color == (1, 2, 3) and scale.percentiles == (5, 95)
    with pytest.raises(AttributeError):
        scale.cmap = "gray"  # type: ignore[misc]


def test_a_single_map_with_inf_scales_per_channel():
    """Bug: norm="channel" on one 2-D map holding Inf crashed (a scalar minimum cannot be marked empty)."""
    heat = torch.tensor([[0.0, 1.0], [2.0, float("inf")]])
    rgb, info = overlay_array(np.zeros((2, 2, 3), np.uint8), heat, norm="channel", alpha=1.0, cmap="gray")
    assert (info.vmin, info.vmax, info.n_inf) == (0.0, 2.0, 1)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [255, 255, 255]  # min black, max white
