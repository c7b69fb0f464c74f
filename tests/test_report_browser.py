"""The report in a real browser: Debian's Chromium driven by Playwright, offline.

`.ci/run` installs chromium (apt) and playwright (pip); the browser is never
downloaded (no `playwright install`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_report import XSS, payload, xss_model

import featuremaps as fm

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("FEATUREMAPS_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))

AXE = Path(os.environ.get("FEATUREMAPS_AXE", Path(__file__).resolve().parent.parent / ".ci/node/node_modules/axe-core/axe.min.js"))

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists() and os.environ.get("FEATUREMAPS_REQUIRE_BROWSER"):
    raise RuntimeError(f"{CHROMIUM} is missing but FEATUREMAPS_REQUIRE_BROWSER is set (apt-get install chromium)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")


def wait_until(page, expression: str, timeout: float = 15.0) -> None:
    """Poll a JavaScript expression until it is true.

    Playwright's ``wait_for_function`` evaluates its predicate with ``eval``,
    which the report's Content-Security-Policy (rightly) forbids; the
    DevTools ``evaluate`` used here is not subject to the page's policy.
    """
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {expression}")
        time.sleep(0.05)


def axe_violations(page) -> list[str]:
    """axe-core's accessibility violations on the loaded page, as 'rule (impact): n elements'.

    axe-core comes from npm (`.ci/run` installs it under .ci/node); it is injected through the
    DevTools protocol, which the pages' Content-Security-Policy does not govern.
    """
    if not AXE.is_file():
        if os.environ.get("FEATUREMAPS_REQUIRE_BROWSER"):
            raise RuntimeError(f"{AXE} is missing (npm install --prefix .ci/node axe-core)")
        pytest.skip("axe-core not installed (.ci/run installs it with npm)")
    page.evaluate(AXE.read_text(encoding="utf-8"))
    return page.evaluate(
        "axe.run(document).then(r => r.violations.map(v => `${v.id} (${v.impact}): ${v.nodes.length} elements`))"
    )


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A page with its console messages, errors, requests and dialogs recorded."""

    def __init__(self, browser, path: Path, viewport=(1400, 1000)) -> None:
        self.page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.console: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))

        def on_dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", on_dialog)
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("html[data-ready=true]")

    def canvas_url(self, selector: str) -> str:
        return self.page.eval_on_selector(selector, "c => c.toDataURL()")


@pytest.fixture(scope="module")
def default_page(browser, tmp_path_factory):
    path = fm.report().save(tmp_path_factory.mktemp("report") / "report.html")
    page = Page(browser, path)
    yield page
    page.page.close()


def test_no_console_errors_and_no_network(default_page):
    p = default_page
    p.page.wait_for_timeout(300)
    assert [m for m in p.console if m[0] in ("error", "pageerror")] == []
    external = [u for u in p.requests if u != p.url and not u.startswith(("data:", "blob:"))]
    assert external == []


def test_top1_is_a_cat(default_page):
    first = default_page.page.locator("#predictions li").first
    assert int(first.get_attribute("data-index")) in range(281, 286)
    assert first.locator(".cls").inner_text() in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_click_channel_opens_overlay_and_opacity_changes_it(default_page):
    page = default_page.page
    assert page.locator("#detail").is_hidden()
    page.click("#grid", position={"x": 40, "y": 40})
    page.wait_for_selector("#detail:not([hidden])")
    wait_until(page, "document.getElementById('detail-overlay').width > 0")
    assert page.locator("#detail-title").inner_text().endswith(" of " + page.locator("#layer-name").inner_text())
    before = default_page.canvas_url("#detail-overlay")
    page.eval_on_selector("#opacity", "s => { s.value = '0.1'; s.dispatchEvent(new Event('input')); }")
    wait_until(page, "document.getElementById('detail-overlay').dataset.opacity === '0.1'")
    after = default_page.canvas_url("#detail-overlay")
    assert before != after
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-channel.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")


def test_channel_view_sits_beside_the_grid_and_covers_nothing(default_page):
    """The channel view must not hide what it explains: nothing under it, one colour scale, a legend."""
    page = default_page.page
    page.click("#grid", position={"x": 40, "y": 40})
    page.wait_for_selector("#detail:not([hidden])")
    wait_until(page, "document.getElementById('detail-overlay').dataset.cmap !== undefined")
    covered = page.evaluate("""() => [...document.querySelectorAll('.pred .prob, .pred .cls, #grid, #layer-meta')]
        .filter(e => { const r = e.getBoundingClientRect(); if (r.width === 0) return false;
                       const x = Math.min(r.right - 2, window.innerWidth - 2), y = r.top + r.height / 2;
                       if (y < 0 || y > window.innerHeight) return false;
                       const hit = document.elementFromPoint(x, y); return !(hit === e || e.contains(hit)); })
        .map(e => e.id || e.className)""")
    assert covered == []
    box = page.locator("#detail").bounding_box()
    grid = page.locator(".grid-wrap").bounding_box()
    assert box["x"] >= grid["x"] + grid["width"]  # beside the grid, not over it
    cmaps = {page.get_attribute(sel, "data-cmap") for sel in ("#grid", "#detail-map", "#detail-overlay")}
    assert len(cmaps) == 1 and None not in cmaps
    assert page.locator("#detail-legend canvas").count() == 1
    page.select_option("#norm", "channel")  # a per-channel scale: the legend gives this channel's values
    wait_until(page, "document.getElementById('detail-map').dataset.cmap === 'viridis'")
    assert "this channel's own range" in page.locator("#detail-legend").inner_text()
    page.select_option("#norm", "layer")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")


def test_layer_filter_hides_what_does_not_match(default_page):
    """What a user sees: the visible entries after typing, not only attributes."""
    page = default_page.page
    layers = payload(Path(default_page.url[7:]).read_text(encoding="utf-8"))["layers"]
    total = page.locator(".layer-btn:visible").count()
    assert total == len(layers)
    page.fill("#filter", "act_head")
    expected = [L["name"] for L in layers if "act_head" in (L["name"] + " " + L["type"]).lower()]
    wait_until(page, f"document.querySelectorAll('.layer-btn').length && "
                     f"[...document.querySelectorAll('.layer-btn')].filter(b => b.offsetParent).length === {len(expected)}")
    assert page.locator(".layer-btn:visible").all_inner_texts()[0].startswith(expected[0])
    assert page.locator(".stage:visible").count() == 1  # stages with no match are hidden too
    assert page.locator("#filter-count").inner_text() == f"{len(expected)} of {len(layers)} layers match"
    page.fill("#filter", "no such layer")
    wait_until(page, "![...document.querySelectorAll('.layer-btn')].some(b => b.offsetParent)")
    assert page.locator("#filter-count").inner_text().startswith("No layer matches")
    page.fill("#filter", "")
    wait_until(page, f"[...document.querySelectorAll('.layer-btn')].filter(b => b.offsetParent).length === {total}")


def test_depth_chart_labels_fit_and_read_on_a_phone(browser, default_page):
    for width in (1400, 390):
        p = Page(browser, Path(default_page.url[7:]), viewport=(width, 844))
        try:
            chart = p.page.evaluate("""() => { const s = document.querySelector('#depth-chart svg');
                const box = document.getElementById('depth-chart').getBoundingClientRect();
                const texts = [...s.querySelectorAll('text')].map(t => { const b = t.getBBox();
                    return {x: b.x, right: b.x + b.width, text: t.textContent,
                            px: parseFloat(getComputedStyle(t).fontSize) * s.getBoundingClientRect().width
                                / s.viewBox.baseVal.width}; });
                return {w: s.getBoundingClientRect().width, box: box.width, vb: s.viewBox.baseVal.width, texts}; }""")
            assert abs(chart["w"] - chart["box"]) <= 1 and chart["vb"] == chart["w"]  # drawn at its own size
            assert all(t["x"] >= 0 and t["right"] <= chart["vb"] for t in chart["texts"])  # nothing clipped
            assert all(t["px"] >= 10.5 for t in chart["texts"])  # readable on a phone
            lows = [t["text"] for t in chart["texts"] if t["text"].startswith("-")]
            assert lows, "the mean panel of the default model has a negative lower tick"
        finally:
            p.page.close()


def test_scores_are_formatted_for_people_and_identical_maps_are_explained(default_page):
    import re

    page = default_page.page
    page.select_option("#cam-class", "0")
    values = page.locator("#cam-grid .scores dd").all_inner_texts()
    assert values and all(re.fullmatch(r"\d+\.\d\d|\d+\.\d%|n/a", v) for v in values), values
    data = payload(Path(default_page.url[7:]).read_text(encoding="utf-8"))["cams"]
    same = {m: e["same"] for m, e in data["classes"][0]["maps"].items() if "same" in e}
    assert same.get("cam") == "gradcam"  # a GAP + linear head: CAM's weights are Grad-CAM's times H*W
    notes = page.locator("#cam-grid .same").all_inner_texts()
    assert len(notes) == len(same) and "Identical maps" in page.locator("#cam-hint").inner_text()


def test_keyboard_moves_between_layers_and_channels(default_page):
    page = default_page.page
    names = [d["name"] for d in payload(Path(default_page.url[7:]).read_text(encoding="utf-8"))["layers"]]
    page.locator("#grid").focus()
    start = page.locator("#layer-name").inner_text()
    i = names.index(start)
    page.keyboard.press("ArrowDown")
    assert page.locator("#layer-name").inner_text() == names[i + 1]
    page.keyboard.press("j")
    assert page.locator("#layer-name").inner_text() == names[i + 2]
    page.keyboard.press("ArrowUp")
    assert page.locator("#layer-name").inner_text() == names[i + 1]
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#detail:not([hidden])")
    first = page.locator("#detail").get_attribute("data-channel")
    page.keyboard.press("ArrowRight")
    wait_until(page, f"document.getElementById('detail').dataset.channel !== '{first}'")
    page.keyboard.press("Escape")


def test_cam_panels_render_and_follow_the_class_picker(default_page):
    page = default_page.page
    data = payload(Path(default_page.url[7:]).read_text(encoding="utf-8"))
    cards = page.locator("#cam-grid canvas")
    assert cards.count() == len(data["cams"]["methods"])
    wait_until(page, "document.querySelector('#cam-grid canvas').width > 0")
    first = default_page.canvas_url("#cam-grid canvas")
    page.select_option("#cam-class", "1")
    wait_until(page, "document.querySelector('#cam-grid canvas').width > 0")
    page.wait_for_timeout(200)
    assert default_page.canvas_url("#cam-grid canvas") != first
    assert page.locator("#cam-grid .scores").count() == 0  # scores belong to the top class only
    page.select_option("#cam-class", "0")
    assert page.locator("#cam-grid .scores").count() == len(data["cams"]["methods"])


def test_layout_fits_a_phone(browser, default_page):
    phone = Page(browser, Path(default_page.url[7:]), viewport=(390, 844))
    try:
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1  # no horizontal scrolling of the page itself
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        phone.page.screenshot(path=str(ARTIFACTS / "report-phone.png"))
    finally:
        phone.page.close()


def test_xss_module_name_renders_as_text(browser, tmp_path):
    path = fm.report(xss_model(), cam_methods=None).save(tmp_path / "xss.html")
    p = Page(browser, path)
    try:
        p.page.wait_for_timeout(300)
        assert p.dialogs == []
        assert p.page.locator(".lname", has_text=XSS).count() == 1
        assert p.page.locator("img[src='x']").count() == 0
        assert [m for m in p.console if m[0] in ("error", "pageerror")] == []
    finally:
        p.page.close()


def test_wide_and_deep_model_stays_usable(browser, tmp_path):
    """300 layers and a 2,048-channel layer: the page opens, the wide layer draws and enlarges."""
    import torch

    from test_report import Deep

    torch.manual_seed(0)
    path = fm.report(Deep().eval(), fm.sample_image("coffee"), cam_methods=None).save(tmp_path / "deep.html")
    p = Page(browser, path)
    try:
        assert p.page.locator(".layer-btn").count() == 301
        p.page.click(".layer-btn[data-name='wide']")
        wait_until(p.page, "document.getElementById('grid').dataset.layer === 'wide'")
        assert p.page.eval_on_selector("#grid", "c => c.width * c.height") > 2048 * 32 * 32
        p.page.click("#grid", position={"x": 5, "y": 5})
        p.page.wait_for_selector("#detail:not([hidden])")
        assert [m for m in p.console if m[0] in ("error", "pageerror")] == []
    finally:
        p.page.close()


def test_channel_view_links_to_the_atlas_and_shows_synthesized_images(browser, tmp_path):
    import torch
    from torch.utils.data import TensorDataset

    model = xss_model()
    fm.build_atlas(model, TensorDataset(torch.rand(4, 3, 32, 32)), layers="conv", k=2,
                   progress=False).save(tmp_path / "atlas", patches=False)
    path = fm.report(model, fm.sample_image("coffee"), cam_methods=None, atlas=tmp_path / "atlas",
                     atlas_href="atlas", synthesize="conv", synth_steps=4, synth_size=32).save(tmp_path / "r.html")
    p = Page(browser, path)
    try:
        p.page.click(".layer-btn[data-name='conv']")
        p.page.click("#grid", position={"x": 3, "y": 3})
        p.page.wait_for_selector("#detail:not([hidden])")
        channel = p.page.locator("#detail").get_attribute("data-channel")
        assert p.page.locator("#detail-atlas").get_attribute("href") == f"atlas/layers/000.html#c{channel}"
        assert p.page.locator("#detail-synth-fig").is_visible()
        p.page.click(f".layer-btn[data-name='{XSS}']")  # a layer without either
        p.page.click("#grid", position={"x": 3, "y": 3})
        assert p.page.locator("#detail-atlas-p").is_hidden() and p.page.locator("#detail-synth-fig").is_hidden()
    finally:
        p.page.close()


def test_screenshot_artifact(default_page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / "report.png"
    default_page.page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000


def test_atlas_pages_fit_and_stay_offline(browser, tmp_path):
    """The atlas of real photos in the browser: no errors, no network, every channel card inside its box."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in fm.sample_images():
        fm.load_image(fm.sample_image(name)).save(folder / f"{name}.jpg")
    atlas = fm.build_atlas(fm.load_model(), folder, layers="_blocks.1[45]._project_conv", k=3, progress=False)
    out = atlas.save(tmp_path / "atlas")
    pages = [out / "index.html", *sorted((out / "layers").glob("*.html"))]
    assert len(pages) == 3
    for width in (1280, 390):
        page = browser.new_page(viewport={"width": width, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith("file:") else problems.append(r.url))
        try:
            for path in pages:
                page.goto(path.resolve().as_uri())
                overflowing = page.evaluate(
                    "() => [...document.querySelectorAll('.ch, .card')].filter(c => c.scrollWidth > c.clientWidth + 1)"
                    ".map(c => c.id || c.className)"
                )
                assert overflowing == [], (path.name, width, overflowing)
                assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), path.name
            page.goto(pages[-1].resolve().as_uri())
            shown = page.locator("#c0 .scores dd").all_inner_texts()
            assert shown[3] == f"{100 * atlas.stats('_blocks.15._project_conv').active_fraction[0]:.1f}%"
            if width == 1280:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "atlas-layer.png"))
        finally:
            page.close()
        assert problems == [], problems


def test_every_page_we_write_has_no_accessibility_violations(browser, default_page, tmp_path):
    """axe-core in Chromium on the report, an atlas (index and layer page) and a maps folder's index."""
    import torch
    from torch.utils.data import TensorDataset

    model = xss_model()
    fm.build_atlas(model, TensorDataset(torch.rand(4, 3, 32, 32)), layers="conv", k=2,
                   progress=False).save(tmp_path / "atlas", patches=False)
    net, preprocess = fm.load_model()
    maps = fm.get_feature_maps(net, preprocess(fm.load_image(fm.sample_image("cat"))), layers="_blocks.1[45]._project_conv")
    fm.visualize(maps).save(tmp_path / "maps")
    pages = [Path(default_page.url[7:]), tmp_path / "atlas/index.html", tmp_path / "atlas/layers/000.html",
             tmp_path / "maps/index.html"]
    found = {}
    for path in pages:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(path.resolve().as_uri())
            page.wait_for_timeout(300)
            found[path.name if path.parent.name != "layers" else "atlas layer page"] = axe_violations(page)
        finally:
            page.close()
    assert found == {name: [] for name in found}


def test_what_drove_the_prediction_opens_a_channel_in_the_layer_view(default_page):
    page = default_page.page
    data = payload(Path(default_page.url[7:]).read_text(encoding="utf-8"))["drivers"]
    cards = page.locator("#drivers-grid .driver")
    assert cards.count() == len(data["classes"][0]["channels"]) > 0
    wait_until(page, "document.querySelector('#drivers-grid canvas').dataset.drawn === 'true'")
    page.select_option("#drivers-class", "1")
    first = page.locator("#drivers-grid .driver h3").first.inner_text()
    assert first == f"channel {data['classes'][1]['channels'][0]['channel']}"
    page.locator("#drivers-grid .open").first.click()
    page.wait_for_selector("#detail:not([hidden])")
    assert page.locator("#layer-name").inner_text() == data["layer"]
    wait_until(page, f"document.getElementById('detail').dataset.channel === '{data['classes'][1]['channels'][0]['channel']}'")
    page.keyboard.press("Escape")
    page.select_option("#drivers-class", "0")


def test_served_page_loads_and_nothing_else_of_the_folder_is_shown(browser, tmp_path):
    """`report --serve` in Chromium: the page and its atlas links work; any other address shows nothing."""
    import torch
    from torch.utils.data import TensorDataset

    from featuremaps.report.serve import serve_report

    model = xss_model()
    fm.build_atlas(model, TensorDataset(torch.rand(4, 3, 32, 32)), layers="conv", k=2,
                   progress=False).save(tmp_path / "atlas")
    page_path = fm.report(model, fm.sample_image("coffee"), cam_methods=None, atlas=tmp_path / "atlas",
                          atlas_href="../atlas").save(tmp_path / "pages" / "report.html")
    (tmp_path / "pages" / "secret.txt").write_text("SECRET-CONTENT")
    (tmp_path / "pages" / "root").symlink_to("/")
    with serve_report(page_path, atlas=tmp_path / "atlas").start() as server:
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            response = page.goto(server.url())
            assert response is not None and response.status == 200
            page.wait_for_selector("html[data-ready=true]")
            assert problems == []
            # the channel view's atlas link opens the served atlas page, pictures included
            page.click(".layer-btn[data-name='conv']")
            page.click("#grid", position={"x": 3, "y": 3})
            page.wait_for_selector("#detail:not([hidden])")
            page.click("#detail-atlas")
            page.wait_for_load_state()
            assert page.url.startswith(f"http://127.0.0.1:{server.port}/atlas/layers/000.html#c")
            wait_until(page, "[...document.images].length > 0 && [...document.images].every(i => i.naturalWidth > 0)")
            origin = f"http://127.0.0.1:{server.port}"
            for path in ("/", "/pages/", "/pages", "/pages/secret.txt", "/pages/root/etc/passwd", "/atlas/",
                         "/atlas/atlas.json", "/pages/../pages/secret.txt", "/%2e%2e/pages/secret.txt"):
                response = page.goto(origin + path)
                assert response is not None and response.status == 404, path
                text = page.locator("body").inner_text()
                assert "SECRET" not in text and "root:" not in text and "report.html" not in text, path
                assert page.locator("a").count() == 0, path  # no listing, nothing to follow
        finally:
            page.close()
