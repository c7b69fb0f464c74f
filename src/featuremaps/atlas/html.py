"""The atlas pages: templates that render plain page data, escaped by default.

The data (built by :class:`~featuremaps.atlas.Atlas`) is plain dicts of
strings and numbers; the templates below (Jinja2 with autoescaping, so every
name, path and number is HTML-escaped) and the stylesheet are all there is to
the look. The stylesheet is the report's own (``featuremaps/report/report.css``,
read from the package) followed by the few rules only the atlas needs
(:data:`ATLAS_STYLE`), so the two look alike and cannot drift apart.

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

import functools
from importlib import resources
from typing import Any

from ..report.build import source_hash

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

ATLAS_STYLE = """
a { color: var(--accent); text-underline-offset: 2px; }
.brand a { color: inherit; text-decoration: none; }
.atlas-main { padding: 1rem 1.5rem; }
.mono { font-family: var(--mono); font-size: 12.5px; overflow-wrap: anywhere; }
h1.mono { font-size: 1.25rem; }
.top .hint { max-width: 60rem; }
.nav { display: flex; flex-wrap: wrap; gap: .4rem .5rem; margin: .6rem 0 .2rem; font-size: 13.5px; }
.nav a { padding: .2rem .65rem; border: 1px solid var(--line); border-radius: 6px; background: var(--card); }
.nav a:hover, .nav a:focus { background: var(--accent-soft); }
.nav-bottom { padding: .2rem 1.5rem .6rem; }
.table-wrap { overflow-x: auto; }
.layers { border-collapse: collapse; width: 100%; font-size: 13.5px; }
.layers th, .layers td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: middle; }
.layers th { color: var(--muted); font-weight: 600; font-size: 12.5px; white-space: nowrap; }
.layers tbody tr:hover { background: #fbfbf9; }
.layers .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.layers .name { overflow-wrap: break-word; }
.layers .name a, .nav a, .ch h2 a { text-decoration: none; }
.layers .name a { font-weight: 600; }
.layers .name a:hover, .layers .name a:focus { background: var(--accent-soft); }
.preview { display: flex; flex-wrap: wrap; gap: 3px; }
.preview img { display: block; width: 40px; height: 40px; object-fit: cover; border-radius: 3px; }
.ch-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, var(--cell)), 1fr)); gap: .8rem; }
.ch { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: .6rem .7rem .5rem;
  min-width: 0; scroll-margin-top: 1rem; }
.ch:target { outline: 2px solid var(--accent); outline-offset: 1px; }
.ch h2 { font-size: 13px; margin: 0 0 .4rem; font-weight: 600; }
.ch h2 a { color: inherit; }
.ch h2 a:hover { color: var(--accent); }
.figs { display: flex; flex-wrap: wrap; gap: .5rem; align-items: flex-start; }
.figs figure { margin: 0; min-width: 0; max-width: 100%; }
.figs img { display: block; max-width: 100%; height: auto; border-radius: 4px; background: #fbfbf9; }
.figs img.px { image-rendering: pixelated; }
.figs figcaption { margin-top: .15rem; font-size: 11.5px; }
.ch .scores { grid-template-columns: auto minmax(0, 1fr) auto minmax(0, 1fr); gap: 0 .45rem; margin: .45rem 0 0; }
.ch .scores dd { overflow-wrap: anywhere; }
.ch details { font-size: 12px; margin-top: .35rem; }
.ch summary { cursor: pointer; color: var(--muted); }
.ch ol { margin: .2rem 0 0; padding-left: 1.3rem; }
.ch li { overflow-wrap: anywhere; }
.empty { color: var(--muted); font-size: 12px; margin: .4rem 0; }
@media (max-width: 640px) {
  .top { padding: 1rem 1rem .5rem; }
  .atlas-main { padding: .6rem; }
  .nav-bottom, .foot { padding-left: 1rem; padding-right: 1rem; }
  .layers thead { display: none; }
  .layers, .layers tbody, .layers tr { display: block; width: 100%; }
  .layers tr { border-bottom: 1px solid var(--line); padding: .45rem 0; }
  .layers td { display: grid; grid-template-columns: 6.5rem minmax(0, 1fr); gap: .6rem; border: 0; padding: .1rem 0; }
  .layers td::before { content: attr(data-label); color: var(--muted); font-size: 12.5px; }
  .layers .num { text-align: left; }
}
"""
"""The rules the atlas adds to the report's stylesheet."""

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{ page.title }}</title>
<style>{{ style }}</style>
</head>
"""

_FOOT = """<footer class="foot">
  Made with featuremaps. This page is self-contained within its atlas folder: it makes no network requests.
</footer>
</body>
</html>
"""

INDEX_TEMPLATE = _HEAD + """<body>
<a class="skip" href="#layers-h">Skip to the layers</a>
<header class="top">
  <div class="brand">featuremaps atlas</div>
  <h1>{{ page.title }}</h1>
  <p class="sub">{{ page.num_images }} images{% if page.root %} from <span class="mono">{{ page.root }}</span>{% endif %}
    &middot; top {{ page.k }} per channel by spatial {{ page.score }}
    &middot; {{ page.layers | length }} layers</p>
  <p class="hint">Each layer page shows, for every channel, the {{ page.k }} image patches that activate it most (the
    part of the image the channel sees, centred on its maximum){% if page.synthesized %}, an image synthesized to
    excite it{% endif %} and its statistics over all images; <i>active</i> is the share of positions above zero.</p>
</header>
<main class="atlas-main">
<section class="card" aria-labelledby="layers-h">
  <h2 id="layers-h">Layers</h2>
  <div class="table-wrap">
  <table class="layers">
    <thead><tr><th>Layer</th><th>Type</th><th class="num">Channels</th><th>Map</th><th>Receptive field</th>
      <th class="num">Mean</th><th class="num">Active</th><th>First channels</th>
      {% if page.synthesized %}<th>Synthesized</th>{% endif %}</tr></thead>
    <tbody>
    {% for layer in page.layers %}
      <tr><td class="name mono" data-label="Layer"><a href="{{ layer.href }}">{{ layer.name }}</a></td>
        <td data-label="Type">{{ layer.type }}</td>
        <td class="num" data-label="Channels">{{ layer.channels }}</td>
        <td data-label="Map">{{ layer.spatial }}</td>
        <td data-label="Receptive field">{{ layer.rf }}</td>
        <td class="num" data-label="Mean">{{ layer.mean }}</td>
        <td class="num" data-label="Active">{{ layer.active }}</td>
        <td data-label="First channels"><div class="preview">{% for p in layer.preview %}<img src="{{ p.src }}"
          width="40" height="40" loading="lazy" alt="Top patches of channel {{ p.channel }}">{% endfor %}</div></td>
        {% if page.synthesized %}<td data-label="Synthesized"><div class="preview">{% for p in layer.synth_preview
          %}<img src="{{ p.src }}" width="40" height="40" loading="lazy"
          alt="Image synthesized for channel {{ p.channel }}">{% endfor %}</div></td>{% endif %}</tr>
    {% endfor %}
    </tbody>
  </table>
  </div>
</section>
{% if page.skipped %}
<section class="card" aria-labelledby="skipped-h">
  <h2 id="skipped-h">Skipped images ({{ page.skipped | length }})</h2>
  <p class="muted">These files could not be read and are not part of the atlas.</p>
  <ul>{% for s in page.skipped %}<li><span class="mono">{{ s.name }}</span>: {{ s.reason }}</li>{% endfor %}</ul>
</section>
{% endif %}
</main>
""" + _FOOT
"""The index page: one row per layer, then the skipped images."""

_NAV = """<nav class="nav" aria-label="{{ nav_label }}">{% if page.prev %}<a href="{{ page.prev }}" rel="prev">&larr; previous layer</a>{%
  endif %}<a href="../index.html">all layers</a>{% if page.next %}<a href="{{ page.next }}" rel="next">next layer &rarr;</a>{%
  endif %}</nav>"""

LAYER_TEMPLATE = _HEAD + """<body>
<a class="skip" href="#channels">Skip to the channels</a>
<header class="top">
  <div class="brand"><a href="../index.html">featuremaps atlas</a></div>
  <h1 class="mono">{{ page.name }}</h1>
  <p class="sub">{{ page.type }} &middot; {{ page.channels | length }} channels &middot; map {{ page.spatial }}
    &middot; receptive field {{ page.rf }} &middot; top {{ [page.k, page.num_images] | min }} of {{ page.num_images }} images by spatial
    {{ page.score }}</p>
  <p class="hint">Per channel: its top patches, best first{% if page.synth_side %}, an image synthesized to excite
    it{% endif %}, and its statistics over all images (<i>active</i>: the share of positions above zero).</p>
  {% set nav_label = "Layers" %}""" + _NAV + """
</header>
<main class="atlas-main" id="channels" tabindex="-1">
<div class="ch-grid">
{% for ch in page.channels %}
  <article class="ch" id="{{ ch.id }}" aria-labelledby="{{ ch.id }}-h">
    <h2 id="{{ ch.id }}-h"><a href="#{{ ch.id }}">channel {{ ch.channel }}</a></h2>
    {% if ch.image or ch.synth %}<div class="figs">
      {% if ch.image %}<figure><img src="{{ ch.image }}" width="{{ ch.width }}" height="{{ ch.height }}" loading="lazy"
        {% if ch.image.endswith(".png") %}class="px" {% endif %}alt="Top {{ ch.examples | length }} patches of channel {{ ch.channel }}">
        <figcaption>top {{ ch.examples | length }}</figcaption></figure>{% endif %}
      {% if ch.synth %}<figure><img src="{{ ch.synth }}" width="{{ page.synth_side }}" height="{{ page.synth_side }}"
        loading="lazy" alt="An image synthesized to excite channel {{ ch.channel }}">
        <figcaption>synthesized</figcaption></figure>{% endif %}
    </div>{% endif %}
    {% if not ch.examples %}<p class="empty">no examples</p>{% endif %}
    <dl class="scores"><dt>mean</dt><dd>{{ ch.mean }}</dd><dt>std</dt><dd>{{ ch.std }}</dd>
      <dt>max</dt><dd>{{ ch.max }}</dd><dt>active</dt><dd>{{ ch.active }}</dd></dl>
    {% if ch.examples %}<details><summary>examples</summary><ol>
      {% for e in ch.examples %}<li><span class="mono">{{ e.name }}</span> &middot; {{ e.score }} at ({{ e.y }}, {{ e.x }})</li>{% endfor %}
    </ol></details>{% endif %}
  </article>
{% endfor %}
</div>
</main>
<div class="nav-bottom">{% set nav_label = "Layers, at the end of the page" %}""" + _NAV + """</div>
""" + _FOOT
"""A layer page: a grid of channels, each with its top patches, synthesized image and statistics."""


@functools.lru_cache(maxsize=1)
def _report_css() -> str:
    return resources.files("featuremaps.report").joinpath("report.css").read_text(encoding="utf-8")


def stylesheet(cell: int | None = None) -> str:
    """The pages' stylesheet: the report's, the atlas rules, and a layer page's card width.

    Args:
        cell: the smallest width of a channel card in pixels (layer pages).

    Example:
        >>> css = stylesheet(200)
        >>> "--accent" in css and ".ch-grid" in css and css.endswith(".ch-grid { --cell: 200px; }\\n")
        True
    """
    css = _report_css() + ATLAS_STYLE
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
    return (
        f"default-src 'none'; img-src 'self' data:; style-src '{source_hash(style)}'; "
        "base-uri 'none'; form-action 'none'"
    )


@functools.lru_cache(maxsize=2)
def _template(source: str) -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(source)


def _render(template: str, page: dict[str, Any], cell: int | None = None) -> str:
    from markupsafe import Markup

    style = stylesheet(cell)
    return str(_template(template).render(page=page, csp=content_security_policy(style), style=Markup(style)))


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
    return _render(INDEX_TEMPLATE, page)


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
    return _render(LAYER_TEMPLATE, page, cell)
