"""The report's concepts (`fm.report(concepts=...)`, `featuremaps report --concepts DIR`): answers, links, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

import featuremaps as fm
from featuremaps.cli import cli
from featuremaps.errors import FeatureMapsError

from test_report import decode_png, payload


def gap_model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4)).eval()


def one_hot_concepts(model: nn.Module, channels: list[int]) -> fm.Concepts:
    """Concepts of layer "1" that are single channels: their coefficients are those channels' activations."""
    found = fm.discover_concepts(model, torch.rand(4, 3, 16, 16), "1", n_concepts=2, examples=False, progress=False)
    w = torch.zeros(len(channels), 6)
    w[torch.arange(len(channels)), torch.tensor(channels)] = 1.0
    return dataclasses.replace(found, components=w)


def _input(model: nn.Module) -> torch.Tensor:
    preprocess = fm.models.preprocess_for(model, guess=True)
    return preprocess(fm.load_image(fm.sample_image("coffee")))


def test_importance_and_heatmaps_are_the_known_ones_and_the_layer_is_captured():
    """One-hot concepts on a GAP + linear head: importance = w[class, c] * mean(A_c), heatmap = A_c on one scale."""
    model = gap_model()
    concepts = one_hot_concepts(model, [2, 4])
    rep = fm.report(model, fm.sample_image("coffee"), layers="0", cam_methods=None, classes=3, concepts=concepts)
    sec = rep.data["concepts"]
    assert sec["layer"] == "1" and sec["index"] is None
    assert "1" in [d["name"] for d in rep.data["layers"]]  # not asked for in layers=: captured for the concepts
    x = _input(model)
    acts = torch.relu(model[0](x)).detach()[0]  # (6, H, W), an independent path
    for entry in sec["classes"]:
        w = model[4].weight.detach()[entry["index"]]
        expected = {k: float(w[c] * acts[c].mean()) for k, c in enumerate([2, 4])}
        got = {c["concept"]: c["importance"] for c in entry["concepts"]}
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert [c["importance"] for c in entry["concepts"]] == sorted(got.values(), reverse=True)
        total = sum(abs(v) for v in expected.values())
        assert [c["share"] for c in entry["concepts"]] == pytest.approx(
            [expected[c["concept"]] / total for c in entry["concepts"]], rel=1e-4)
    scale = float(acts[[2, 4]].max())
    for k, c in enumerate([2, 4]):
        m = sec["maps"][k]
        assert m["concept"] == k and m["channels"] == [c] and m["href"] is None and m["sheet"] is None
        assert m["peak"] == pytest.approx(float(acts[c].max()), rel=1e-5)
        heat = decode_png(m["png"]).astype(np.float64) / 255
        assert heat.shape == tuple(acts.shape[1:])
        assert np.abs(heat - acts[c].numpy() / scale).max() <= 0.5 / 255 + 1e-6
    assert 'id="concepts"' in rep.html and rep.html.count("<script>") == 2
    plain = fm.report(model, fm.sample_image("coffee"), layers="0", cam_methods=None)
    assert plain.data["concepts"] is None and 'id="concepts"' not in plain.html
    assert plain.html.count("<script>") == 1


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = gap_model()
    root = tmp_path_factory.mktemp("saved")
    fm.discover_concepts(model, TensorDataset(torch.rand(6, 3, 24, 24)), "1", n_concepts=3, top_k=2,
                         progress=False, out=root / "concepts")
    return model, root / "concepts"


def test_a_concepts_folder_links_each_concept_page_and_embeds_its_examples(saved, tmp_path):
    model, folder = saved
    loaded = fm.load_concepts(folder)
    rep = fm.report(model, fm.sample_image("coffee"), cam_methods=None, concepts=folder, concepts_href="../c")
    sec = rep.data["concepts"]
    assert sec["index"] == "../c/index.html"
    for k, m in enumerate(sec["maps"]):
        assert m["href"] == "../c/atlas/" + loaded.atlas.channel_href("concepts", k)
        assert m["sheet"].startswith("data:image/")
    # the CLI makes the links relative to where the page is written, and they lead to the concept pages
    out = tmp_path / "pages" / "report.html"
    result = CliRunner().invoke(cli, ["report", "--model", "test_report_concepts:gap_model", "--weights", "random",
                                      "--no-cams", "--concepts", str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = payload(out.read_text(encoding="utf-8"))["concepts"]
    for m in data["maps"]:
        page, anchor = m["href"].split("#")
        assert (out.parent / page).resolve().is_file() and anchor == f"c{m['concept']}"
    assert (out.parent / data["index"]).resolve() == (folder / "index.html").resolve()


def test_bad_concepts_are_one_line_errors_before_any_forward(saved, tmp_path):
    model, folder = saved
    calls = []
    model[0].register_forward_pre_hook(lambda *_: calls.append(1))
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FeatureMapsError, match="not a concepts folder") as e:
        fm.report(model, fm.sample_image("coffee"), cam_methods=None, concepts=user)
    assert "\n" not in str(e.value)
    other = nn.Sequential()
    other.add_module("features", nn.Conv2d(3, 6, 3))
    other.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)))
    with pytest.raises(FeatureMapsError, match=r"found in layer '1' .* this model does not have") as e:
        fm.report(other, fm.sample_image("coffee"), cam_methods=None, concepts=folder)
    assert "\n" not in str(e.value)
    with pytest.raises(FeatureMapsError, match="not a folder"):
        fm.report(model, fm.sample_image("coffee"), cam_methods=None, concepts=tmp_path / "missing")
    assert calls == []  # nothing ran
    assert (user / "notes.txt").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    # the same layer name with other channels: found at the forward, said as one line
    wider = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    with pytest.raises(FeatureMapsError, match="do not fit this model") as e:
        fm.report(wider, fm.sample_image("coffee"), cam_methods=None, concepts=folder)
    assert "\n" not in str(e.value)
    result = CliRunner().invoke(cli, ["report", "--model", "test_report_concepts:gap_model", "--weights", "random",
                                      "--no-cams", "--concepts", str(user), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "not a concepts folder" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("drivers", [8, 0])
def test_the_concepts_render_in_chromium_with_no_accessibility_violation(saved, tmp_path, drivers):
    pytest.importorskip("playwright")
    import test_report_browser as trb
    from playwright import sync_api

    if not Path(trb.CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    model, folder = saved
    rep = fm.report(model, fm.sample_image("coffee"), cam_methods=None, classes=3, drivers=drivers,
                    concepts=folder, concepts_href=folder.as_posix())
    page_path = rep.save(tmp_path / "report.html")
    sec = rep.data["concepts"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=trb.CHROMIUM, args=trb.ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            trb.wait_until(page, "document.documentElement.getAttribute('data-concepts-ready') === 'true' && "
                                 "document.querySelectorAll('#concepts-grid canvas[data-drawn]').length === 3")
            assert page.evaluate("document.querySelectorAll('#drivers-class option').length") == 3
            for choice in (0, 2):
                page.select_option("#drivers-class", str(choice))
                order = page.evaluate("Array.from(document.querySelectorAll('#concepts-grid figure'))"
                                      ".map(f => Number(f.dataset.concept))")
                assert order == [c["concept"] for c in sec["classes"][choice]["concepts"]]
            hrefs = page.evaluate("Array.from(document.querySelectorAll('#concepts-grid a')).map(a => a.href)")
            assert len(hrefs) == 3 and all(h.startswith("file://") and "/atlas/layers/" in h for h in hrefs)
            trb.wait_until(page, "Array.from(document.querySelectorAll('#concepts-grid img'))"
                                 ".every(i => i.complete && i.naturalWidth > 0)")
            assert trb.axe_violations(page) == []
            assert errors == []
            trb.ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator("#concepts").screenshot(path=str(trb.ARTIFACTS / f"report-concepts-{drivers}.png"))
        finally:
            browser.close()


def test_serving_the_report_serves_the_concept_pages_it_links(saved, tmp_path):
    """``report --serve --concepts DIR``: every concept link of the page is on the server's allow-list."""
    from posixpath import dirname, normpath

    from featuremaps.report.serve import report_files

    model, folder = saved
    out = tmp_path / "pages" / "report.html"
    result = CliRunner().invoke(cli, ["report", "--model", "test_report_concepts:gap_model", "--weights", "random",
                                      "--no-cams", "--concepts", str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = report_files(out, concepts=folder)
    page_url = next(url for url, path in table.items() if path == out.resolve())
    data = payload(out.read_text(encoding="utf-8"))["concepts"]
    for href in [data["index"], *(m["href"].split("#")[0] for m in data["maps"])]:
        url = normpath(dirname(page_url) + "/" + href)  # how the browser resolves the link
        assert table.get(url) == (out.parent / href).resolve(), href
    assert all(path.is_relative_to(folder.resolve()) or path == out.resolve() for path in table.values())
