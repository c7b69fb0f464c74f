"""The report on models whose output is not class scores: it says what it leaves out and why (no silent gap)."""

from __future__ import annotations

import html as htmllib
import re

import torch
from torch import nn

import featuremaps as fm


class _Segmenter(nn.Module):
    """A per-pixel head: output (N, 2, H, W), no class vector."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _text(page: str) -> str:
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_a_segmenters_report_says_why_it_has_no_heatmaps(tmp_path) -> None:
    torch.manual_seed(0)
    page = fm.report(_Segmenter(), torch.rand(1, 3, 32, 32)).html
    text = _text(page)
    assert "not a classification, so this page has no class heatmaps (CAMs) or channel relevance" in text
    assert "fm.SegmentationTarget" in text
    assert "Where the model looks" not in text  # the CAM section is really absent
    # A classifier's page has that section and not the note: the note depends on the output, not always shown.
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    text = _text(fm.report(classifier, torch.rand(1, 3, 32, 32)).html)
    assert "Where the model looks" in text and "no class heatmaps" not in text


def test_an_unnamed_class_is_not_listed_twice() -> None:
    """A model without class names showed "class 1 ... class 1" in the predictions; a named one keeps its index."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    page = fm.report(classifier, torch.rand(1, 3, 32, 32), cam_methods=["gradcam"], metrics=False).html
    preds = re.search(r'<ol id="predictions">(.*?)</ol>', page, re.S).group(1)
    assert _text(preds).split().count("class") == 3  # three names, no repeated index
    model, pre = fm.load_model()
    page = fm.report(model, fm.sample_image("cat"), cam_methods=["gradcam"], metrics=False, layers="_conv_stem").html
    preds = _text(re.search(r'<ol id="predictions">(.*?)</ol>', page, re.S).group(1))
    assert "tabby" in preds and "class 281" in preds
