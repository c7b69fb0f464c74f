"""visualize(): the renderer wiring for captured maps, pictures on disk, notebook reprs, TensorBoard."""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.cli import cli
from featuremaps.visualize import histogram, safe_filename

XSS = "<img src=x onerror=alert(1)>"


def _two_layer_maps() -> fm.FeatureMaps:
    a = (torch.arange(16) / 8.0).reshape(1, 1, 4, 4).repeat(1, 2, 1, 1)  # 0 .. 1.875
    b = 2 * a
    model = nn.Sequential(OrderedDict(a=nn.Identity(), b=nn.Identity()))
    maps = fm.get_feature_maps(model, a, layers=["a"])
    maps_b = fm.get_feature_maps(model, b, layers=["b"])
    return fm.FeatureMaps({"a": maps["a"], "b": maps_b["b"]})


def _pixel_of_value(img, value_map: torch.Tensor, value: float) -> np.ndarray:
    """The RGB drawn for ``value`` in tile 0 (scale 1, pad 1)."""
    y, x = [int(i) for i in torch.nonzero(value_map[0, 0] == value)[0]]
    top, left, _, _ = img.tile_box(0)
    return img.array[top + y, left + x]


def test_global_norm_shares_one_scale_across_layers():
    maps = _two_layer_maps()
    shared = fm.visualize(maps, norm="global", scale=1)
    one = 1.0  # exists in both layers: a[8] and b[4]
    pa = _pixel_of_value(shared["a"], maps["a"].tensor, one)
    pb = _pixel_of_value(shared["b"], maps["b"].tensor, one)
    assert np.array_equal(pa, pb)
    per_layer = fm.visualize(maps, norm="layer", scale=1)
    qa = _pixel_of_value(per_layer["a"], maps["a"].tensor, one)
    qb = _pixel_of_value(per_layer["b"], maps["b"].tensor, one)
    assert not np.array_equal(qa, qb)  # 1.0 sits at 53% of a's scale but 27% of b's


def test_renderer_follows_the_layout():
    conv1d = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1))
    conv3d = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1))
    head = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert fm.visualize(fm.get_feature_maps(conv1d, torch.randn(1, 2, 30)))["0"].kind == "strip"
    mip = fm.visualize(fm.get_feature_maps(conv3d, torch.randn(1, 1, 4, 8, 8)))["0"]
    assert mip.n_tiles == 4  # one projection per channel
    vec = fm.visualize(fm.get_feature_maps(head, torch.randn(2, 3, 2, 2), layers="1"))["1"]
    assert vec.kind == "sample" and vec.rows == 2
    grid = fm.visualize(torch.randn(1, 7, 5, 5), scale=1)
    assert grid.n_tiles == 7


def test_save_writes_every_layer_and_an_escaped_index(tmp_path):
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), (XSS, nn.ReLU())]))
    maps = fm.get_feature_maps(model, torch.rand(1, 3, 8, 8))
    seen: list[tuple] = []
    index = fm.visualize(maps).save(tmp_path, progress=lambda *call: seen.append(call))
    assert seen == [("drawing layers", 1, 2), ("drawing layers", 2, 2)]  # the one (stage, done, total) protocol
    pngs = sorted(p.name for p in (tmp_path / "layers").iterdir())
    assert pngs == ["000_conv.png", f"001_{safe_filename(XSS)}.png"]
    for name in pngs:
        assert Image.open(tmp_path / "layers" / name).format == "PNG"
    text = index.read_text()
    assert XSS not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "Content-Security-Policy" in text


def test_notebook_reprs():
    maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.rand(1, 3, 8, 8))
    png = maps["0"]._repr_png_()
    assert Image.open(io.BytesIO(png)).size == fm.visualize(maps["0"]).to_pil().size
    html = maps._repr_html_()
    assert html.count("<img") == 2 and "<table>" in html


def test_plot_stats_draws_the_statistics():
    maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.randn(2, 3, 10, 10))
    fig = fm.plot_stats(maps)
    zero_bars = [p.get_height() for p in fig.axes[1].patches]
    assert zero_bars == pytest.approx([maps[n].stats().zero_fraction for n in maps])
    dead_bars = [p.get_height() for p in fig.axes[2].patches]
    assert dead_bars == [maps[n].stats().num_dead for n in maps]


def test_histogram_by_hand():
    counts, edges = histogram(torch.tensor([0.0, 1.0, 1.0, 3.0, float("inf")]), bins=3)
    assert counts.tolist() == [1, 2, 1] and edges.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_log_to_tensorboard_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    with SummaryWriter(str(tmp_path)) as writer:
        assert fm.log_to_tensorboard(writer, maps, step=3) == 2
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    image = acc.Images("featuremaps/grid/1")[0]
    expected = fm.render_map(maps["1"]).array
    assert (image.height, image.width, image.step) == (expected.shape[0], expected.shape[1], 3)
    assert acc.Scalars("featuremaps/zeros/1")[0].value == pytest.approx(maps["1"].stats().zero_fraction)
    hist = acc.Histograms("featuremaps/hist/0")[0].histogram_value
    assert hist.num == maps["0"].tensor.numel() and hist.max == pytest.approx(maps["0"].stats().max)


def test_cli_maps_draws_each_layer(tmp_path):
    result = CliRunner().invoke(
        cli, ["maps", "--layers", "_blocks.14.*", "--top-k", "8", "--no-tensors", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    pngs = list((tmp_path / "layers").glob("*.png"))
    assert len(pngs) == 8  # expand/depthwise/project convs, 3 BNs, 2 ReLU6
    assert (tmp_path / "index.html").is_file() and (tmp_path / "stats.png").is_file()
    assert not (tmp_path / "maps.safetensors").exists()
    first = Image.open(sorted(pngs)[0])
    assert first.size[0] > 50


def test_cli_bad_colormap_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["maps", "--cmap", "not-a-cmap", "-o", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "not-a-cmap" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_overlay_takes_a_path_and_refuses_a_photo_the_heatmap_cannot_fit():
    """fm.overlay(path, heat) like the rest of the API; a crop the model saw is never stretched silently."""
    import numpy as np

    from featuremaps.render import overlay as draw

    model, preprocess = fm.load_model()
    heat = torch.rand(224, 224, generator=torch.Generator().manual_seed(0))
    coffee = fm.sample_image("coffee")  # 600x400: the model sees a centre crop
    ours = fm.overlay(coffee, heat, preprocess=preprocess, alpha=0.4)
    assert np.array_equal(np.asarray(ours), np.asarray(draw(preprocess.view(fm.load_image(coffee)), heat, alpha=0.4)))
    with pytest.raises(fm.errors.FeatureMapsError, match="pass preprocess="):
        fm.overlay(coffee, heat)
    square = fm.sample_image("astronaut")  # 512x512: any square map fits it
    assert np.array_equal(np.asarray(fm.overlay(square, heat[:7, :7])),
                          np.asarray(draw(fm.load_image(square), heat[:7, :7])))
