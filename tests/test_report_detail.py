"""The report's enlarged channel at the map's full resolution (issue #14.2), for maps up to 64 pixels a side."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.report.data import ReportOptions, encode_layer


def _maps(side: int) -> fm.FeatureMaps:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
    return fm.get_feature_maps(net, torch.rand(1, 3, side, side))


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"))


def test_a_pooled_small_layer_carries_its_full_resolution_channels() -> None:
    lm = _maps(48)["0"]
    d = encode_layer(lm, ReportOptions(max_tile=32))
    assert d["tile"] == [32, 32]  # the grid's thumbnails stay pooled
    detail = d["detail"]
    assert detail["tile"] == [48, 48]
    x = lm.tensor[0].numpy()  # (5, 48, 48): every channel at full resolution, min-max scaled like the grid
    lo, hi = x.reshape(5, -1).min(1), x.reshape(5, -1).max(1)
    assert np.allclose(detail["lo"], lo, rtol=1e-3, atol=1e-6) and np.allclose(detail["hi"], hi, rtol=1e-3, atol=1e-6)
    sprite = _decode(detail["sprite"]).astype(np.float64)
    cols = d["cols"]
    assert sprite.shape == (-(-5 // cols) * 48, cols * 48)
    for s in range(5):
        r, c = divmod(s, cols)
        tile = sprite[r * 48:(r + 1) * 48, c * 48:(c + 1) * 48]
        expected = (x[s] - lo[s]) / (hi[s] - lo[s]) * 255
        # JPEG's error is a fraction of what the 32x32 thumbnail (shown enlarged, nearest) loses
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(expected)[None], 32)
        thumb = torch.nn.functional.interpolate(pooled[None], size=(48, 48), mode="nearest")[0, 0].numpy()
        assert np.abs(tile - expected).mean() < 0.5 * np.abs(thumb - expected).mean()


def test_only_pooled_layers_up_to_the_limit_carry_it() -> None:
    assert encode_layer(_maps(16)["0"], ReportOptions(max_tile=32))["detail"] is None  # already full resolution
    assert encode_layer(_maps(80)["0"], ReportOptions(max_tile=32))["detail"] is None  # over 64: stays averaged
    assert encode_layer(_maps(48)["0"], ReportOptions(max_tile=32, detail_max=0))["detail"] is None


def test_the_page_enlarges_the_full_resolution_channel(tmp_path) -> None:
    trb = pytest.importorskip("test_report_browser")  # Chromium through Playwright, as the other browser tests
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
    prep = fm.Preprocess(size=48, resize=48)
    path = fm.report(net, torch.rand(1, 3, 48, 48), preprocess=prep, cam_methods=()).save(tmp_path / "r.html")
    with trb.playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=trb.CHROMIUM, args=trb.ARGS)
        try:
            page = trb.Page(browser, path)
            page.page.click("#grid", position={"x": 10, "y": 10})
            page.page.wait_for_selector("#detail:not([hidden])")
            trb.wait_until(page.page, "document.getElementById('detail-map').dataset.values !== undefined")
            assert page.page.get_attribute("#detail-map", "data-values") == "48x48"
            assert page.page.eval_on_selector("#detail-map", "c => c.width") == 48 * (256 // 48)
            assert "full resolution" in page.page.locator("#detail-map-cap").inner_text()
            assert "averaged" not in page.page.locator("#detail-meta").inner_text()
            assert [m for m in page.console if m[0] in ("error", "pageerror")] == []
        finally:
            browser.close()
