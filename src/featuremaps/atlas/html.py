"""The atlas pages: plain page data rendered by :func:`featuremaps.pages.render_page`, escaped by default.

The data (built by :class:`~featuremaps.atlas.Atlas`) is plain dicts of
strings and numbers; the templates (``featuremaps/pages/templates/atlas_index.html``
and ``atlas_layer.html``, Jinja2 with autoescaping, so every name, path and
number is HTML-escaped) and the stylesheet are all there is to the look. The
stylesheet is the report's own (``featuremaps/pages/static/report.css``)
followed by the few rules only the atlas needs (``atlas.css``,
:data:`ATLAS_STYLE`), so the two look alike and cannot drift apart.

Pages load nothing from the network: the CSS is inline, images are relative
files inside the atlas folder, and a Content-Security-Policy meta tag allows
exactly that inline stylesheet (by its SHA-256 hash), images from the atlas
folder or ``data:`` URIs, and nothing else - no scripts, no inline ``style``
attributes, no remote loads.

Example:
    >>> page = render_index({"title": "<b>", "model": "m", "k": 1, "score": "max", "num_images": 0,
    ...                      "root": "", "layers": [], "skipped": [], "synthesized": False})
    >>> "&lt;b&gt;" in page and "<b>" not in page
    True
"""

from __future__ import annotations

from typing import Any

from ..pages import asset, render_page, source_hash
from ..pages import content_security_policy as _policy

__all__ = [
    "ATLAS_STYLE",
    "INDEX_TEMPLATE",
    "LAYER_TEMPLATE",
    "render_index",
    "render_layer",
    "stylesheet",
    "content_security_policy",
    "source_hash",
]

ATLAS_STYLE = asset("atlas.css")
"""The rules the atlas adds to the report's stylesheet (``featuremaps/pages/static/atlas.css``)."""

INDEX_TEMPLATE = "atlas_index.html"
"""The index page's template (in ``featuremaps/pages/templates``): one row per layer, then the skipped images."""

LAYER_TEMPLATE = "atlas_layer.html"
"""A layer page's template: a grid of channels, each with its top patches, synthesized image and statistics."""


def stylesheet(cell: int | None = None) -> str:
    """The pages' stylesheet: the report's, the atlas rules, and a layer page's card width.

    Args:
        cell: the smallest width of a channel card in pixels (layer pages).

    Example:
        >>> css = stylesheet(200)
        >>> "--accent" in css and ".ch-grid" in css and css.endswith(".ch-grid { --cell: 200px; }\\n")
        True
    """
    css = asset("report.css") + ATLAS_STYLE
    if cell is not None:
        css += f".ch-grid {{ --cell: {int(cell)}px; }}\n"
    return css


def content_security_policy(style: str) -> str:
    """The pages' Content-Security-Policy: this inline stylesheet, images from the atlas folder, nothing else.

    ``'self'`` lets the pages show the patch and synthesized images next to
    them (also opened as ``file://``); ``data:`` allows inline images. There
    is no ``script-src``, so ``default-src 'none'`` forbids every script.

    Example:
        >>> content_security_policy("p {}").split("; ")[1:3]
        ["img-src 'self' data:", "style-src 'sha256-SNJDlN1Iy2mnt7DOjQIyDb2LQE6O5PQiSZomcdzawQ4='"]
    """
    return _policy([style])


def render_index(page: dict[str, Any]) -> str:
    """Render the index page from its data (every value escaped).

    Args:
        page: ``title``, ``model``, ``k``, ``score``, ``num_images``, ``root``,
            ``synthesized`` (whether any channel has a synthesized image),
            ``layers`` (dicts with ``href``, ``name``, ``type``, ``channels``,
            ``spatial``, ``rf``, ``mean``, ``active``, ``preview`` and
            ``synth_preview``: lists of dicts with ``src`` and ``channel``)
            and ``skipped`` (dicts with ``name``, ``reason``).

    Example:
        >>> html = render_index({"title": "t", "model": "m", "k": 9, "score": "max", "num_images": 3,
        ...     "root": "", "layers": [], "skipped": [{"name": "<x>.png", "reason": "bad"}], "synthesized": False})
        >>> "&lt;x&gt;.png" in html and "<script" not in html
        True
    """
    return render_page(INDEX_TEMPLATE, page=page)


def render_layer(page: dict[str, Any]) -> str:
    """Render one layer page from its data (every value escaped).

    Args:
        page: ``title``, ``name``, ``type``, ``k``, ``score``, ``num_images``,
            ``spatial``, ``rf``, ``sheet_width`` and ``sheet_height`` (the
            size of a full sheet of top patches), ``synth_side`` (the shown
            size of synthesized images; 0 without them), ``prev``, ``next``
            and ``channels`` (dicts with ``id``, ``channel``, ``image``,
            ``width``, ``height``, ``synth``, ``mean``, ``std``, ``max``,
            ``active`` and ``examples``: dicts with ``name``, ``score``,
            ``y``, ``x``).

    Example:
        >>> html = render_layer({"title": "t", "name": "<l>", "type": "Conv2d", "k": 1, "score": "max",
        ...     "num_images": 1, "spatial": "2x2", "rf": "3x3", "sheet_width": 64, "sheet_height": 64,
        ...     "synth_side": 0, "prev": None, "next": None, "channels": []})
        >>> "&lt;l&gt;" in html and "Content-Security-Policy" in html
        True
    """
    width = int(page["sheet_width"])
    side = int(page["synth_side"])
    content = width + side + 8 if side and width else max(width, side)
    cell = max(content, 172) + 24  # room for the statistics (two pairs a row); plus the card's padding and border
    return render_page(LAYER_TEMPLATE, page=page, cell=cell)
