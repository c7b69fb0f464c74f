"""featuremaps.pages: one base template, one render_page, a policy that hashes exactly the page's inline code.

The hashes are recomputed here independently (hashlib over the text between the tags, found with a regex on
the final page), so the test fails if render_page hashed anything else or missed an element.
"""

from __future__ import annotations

import base64
import hashlib
import html as htmllib
import re
import sys
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest

from featuremaps.pages import asset, content_security_policy, render_page, script_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
XSS = "<img src=x onerror=alert(1)></style><script>alert(2)</script>"


def _policy(page: str) -> dict[str, str]:
    content = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    return dict(d.strip().split(" ", 1) for d in htmllib.unescape(content).split(";") if d.strip())


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _report_meta(title: str) -> dict[str, object]:
    return {"title": title, "model": "m", "image": "i.png", "input": [3, 8, 8], "layers_total": 0, "channels": 0,
            "generated": "today", "version": "0"}


def test_the_policy_lists_the_hash_of_each_inline_style_and_script_and_nothing_else():
    page = render_page("report.html", meta=_report_meta("t"), predictions=[], photo="", has_cams=False,
                       has_drivers=False, payload=script_json({"a": 1}))
    policy = _policy(page)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(styles) == 1 and len(scripts) == 1 and scripts[0] == asset("report.js")
    assert policy["style-src"] == _digest(styles[0]) and policy["script-src"] == _digest(scripts[0])
    assert policy["default-src"] == "'none'" and policy["img-src"] == "data: blob:"
    assert "unsafe" not in page.split("</head>")[0]


def test_a_page_without_script_allows_none():
    page = render_page("maps_index.html", rows=[("conv", "layers/000_conv.png", "note")])
    policy = _policy(page)
    assert "script-src" not in policy and policy["default-src"] == "'none'" and policy["img-src"] == "'self' data:"
    assert policy["style-src"] == _digest(asset("maps.css"))


def test_data_is_escaped_and_cannot_add_code_or_touch_the_policy():
    title = XSS + " featuremaps-policy-slot"
    page = render_page("maps_index.html", rows=[(title, "layers/0.png", XSS)])
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert len(re.findall(r"<style>", page)) == 1
    assert "featuremaps-policy-slot" in page.split("</head>")[1]  # the data keeps its text; only the head's slot
    assert "featuremaps-policy-slot" not in page.split("</head>")[0]


def test_json_in_a_script_element_cannot_close_it():
    text = str(script_json({"k": "</script><b>&\u2028"}))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    import json

    assert json.loads(text) == {"k": "</script><b>&\u2028"}


def test_content_security_policy_builds_the_same_policy():
    assert content_security_policy(["a{}"], ["x()"], "data:") == (
        f"default-src 'none'; img-src data:; style-src {_digest('a{}')}; script-src {_digest('x()')}; "
        "base-uri 'none'; form-action 'none'"
    )


def test_every_page_extends_the_one_base_template():
    templates = resources.files("featuremaps.pages") / "templates"
    names = sorted(t.name for t in templates.iterdir() if t.name.endswith(".html"))
    includes = ("atlas_nav.html", "report_concepts.html", "report_volume.html")  # parts of pages, included by them
    pages = [n for n in names if n != "base.html" and n not in includes]
    assert pages == ["atlas_index.html", "atlas_layer.html", "concepts.html", "maps_index.html", "report.html"]
    for name in pages:
        text = (templates / name).read_text(encoding="utf-8")
        assert text.startswith('{% extends "base.html" %}'), name
        assert not re.search(r"<head[ >]", text) and "Content-Security-Policy" not in text, name
    for name in includes:
        text = (templates / name).read_text(encoding="utf-8")
        assert "{% extends" not in text and not re.search(r"<(head|style|script)[ >]", text), name


def test_package_data_ships_every_template_and_asset():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["featuremaps"]
    folder = ROOT / "src" / "featuremaps"
    files = [p.relative_to(folder).as_posix() for p in (folder / "pages").rglob("*") if p.is_file()
             and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert len(files) >= 10
    assert [f for f in files if not any(fnmatch(f, g) for g in globs)] == []
