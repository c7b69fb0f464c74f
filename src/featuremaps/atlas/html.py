"""The atlas pages: templates that render plain page data, escaped by default.

The data (built by :class:`~featuremaps.atlas.Atlas`) is plain dicts of
strings and numbers; the templates below (Jinja2 with autoescaping, so every
name, path and number is HTML-escaped) and the stylesheet are all there is to
the look. Pages load nothing from the network: the CSS is inline, images are
relative files inside the atlas folder, and a Content-Security-Policy meta
tag forbids every remote load and every script.

Example:
    >>> page = render_index({"title": "<b>", "model": "m", "k": 1, "score": "max", "num_images": 0,
    ...                      "root": "", "layers": [], "skipped": []})
    >>> "&lt;b&gt;" in page and "<b>" not in page
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["CSP", "STYLE", "INDEX_TEMPLATE", "LAYER_TEMPLATE", "render_index", "render_layer"]

CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
"""The pages' Content-Security-Policy: images from the atlas folder only, inline CSS, no scripts."""

STYLE = """
:root { --bg: #f7f6f2; --card: #ffffff; --ink: #1d2430; --muted: #5b6472; --line: #dedbd2;
  --accent: #2456a4; --accent-soft: #e6edf8; --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
a { color: var(--accent); }
.top { padding: 1.2rem 1.5rem .6rem; border-bottom: 1px solid var(--line); background: var(--card); }
.brand { font-weight: 700; letter-spacing: .04em; color: var(--accent); font-size: 13px; text-transform: uppercase; }
h1 { font-size: 1.35rem; margin: .2rem 0; font-weight: 600; overflow-wrap: anywhere; }
h2 { font-size: 1.05rem; margin: 0 0 .4rem; font-weight: 600; }
.sub, .muted { color: var(--muted); font-size: 13.5px; margin: .2rem 0; overflow-wrap: anywhere; }
main { padding: 1rem 1.5rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 1rem 1.1rem; margin-bottom: 1rem; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: middle; }
th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.mono { font-family: var(--mono); font-size: 12.5px; overflow-wrap: anywhere; }
h1.mono { font-size: 1.25rem; }
.preview img { height: 40px; width: 40px; object-fit: cover; border-radius: 3px; margin-right: 2px; image-rendering: pixelated; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(var(--cell), 1fr)); gap: .8rem; }
.ch { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .5rem; scroll-margin-top: 1rem; }
.ch:target { outline: 2px solid var(--accent); }
.ch h3 { font-size: 13px; margin: 0 0 .3rem; font-family: var(--mono); }
.ch img { display: block; max-width: 100%; height: auto; image-rendering: pixelated; border-radius: 3px; }
.ch .stats { font-size: 12px; color: var(--muted); margin: .3rem 0 0; font-variant-numeric: tabular-nums; }
.ch details { font-size: 12px; margin-top: .2rem; }
.ch summary { cursor: pointer; color: var(--muted); }
.ch ol { margin: .2rem 0 0; padding-left: 1.4rem; }
.ch li { overflow-wrap: anywhere; }
.nav { display: flex; gap: 1rem; font-size: 13.5px; margin: .3rem 0 0; }
.empty { color: var(--muted); font-size: 12px; padding: 1rem 0; }
"""
"""The stylesheet, inlined in every page."""

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

INDEX_TEMPLATE = _HEAD + """<body>
<header class="top">
  <div class="brand">featuremaps atlas</div>
  <h1>{{ page.title }}</h1>
  <p class="sub">{{ page.num_images }} images{% if page.root %} from <span class="mono">{{ page.root }}</span>{% endif %}
    &middot; top {{ page.k }} per channel by spatial {{ page.score }}
    &middot; {{ page.layers | length }} layers</p>
</header>
<main>
<section class="card">
  <h2>Layers</h2>
  <table>
    <thead><tr><th>Layer</th><th>Type</th><th class="num">Channels</th><th>Map</th><th>Receptive field</th>
      <th class="num">Mean</th><th class="num">Active</th><th>First channels</th></tr></thead>
    <tbody>
    {% for layer in page.layers %}
      <tr><td class="mono"><a href="{{ layer.href }}">{{ layer.name }}</a></td><td>{{ layer.type }}</td>
        <td class="num">{{ layer.channels }}</td><td>{{ layer.spatial }}</td><td>{{ layer.rf }}</td>
        <td class="num">{{ layer.mean }}</td><td class="num">{{ layer.active }}</td>
        <td class="preview">{% for src in layer.preview %}<img src="{{ src }}" alt="" loading="lazy">{% endfor %}</td></tr>
    {% endfor %}
    </tbody>
  </table>
</section>
{% if page.skipped %}
<section class="card">
  <h2>Skipped images ({{ page.skipped | length }})</h2>
  <ul>{% for s in page.skipped %}<li><span class="mono">{{ s.name }}</span>: {{ s.reason }}</li>{% endfor %}</ul>
</section>
{% endif %}
</main>
</body>
</html>
"""
"""The index page: one row per layer, then the skipped images."""

LAYER_TEMPLATE = _HEAD + """<body>
<header class="top">
  <div class="brand"><a href="../index.html">featuremaps atlas</a></div>
  <h1 class="mono">{{ page.name }}</h1>
  <p class="sub">{{ page.type }} &middot; {{ page.channels | length }} channels &middot; map {{ page.spatial }}
    &middot; receptive field {{ page.rf }} &middot; top {{ page.k }} of {{ page.num_images }} images by spatial {{ page.score }}</p>
  <p class="nav">{% if page.prev %}<a href="{{ page.prev }}">&larr; previous layer</a>{% endif %}
    <a href="../index.html">all layers</a>
    {% if page.next %}<a href="{{ page.next }}">next layer &rarr;</a>{% endif %}</p>
</header>
<main>
<div class="grid" style="--cell: {{ page.sheet_width + 18 }}px">
{% for ch in page.channels %}
  <section class="ch" id="{{ ch.id }}">
    <h3>channel {{ ch.channel }}</h3>
    {% if ch.image %}<img src="{{ ch.image }}" width="{{ page.sheet_width }}" loading="lazy"
      alt="Top {{ ch.examples | length }} patches of channel {{ ch.channel }}">
    {% elif not ch.examples %}<p class="empty">no examples</p>{% endif %}
    <p class="stats">mean {{ ch.mean }} &middot; std {{ ch.std }} &middot; max {{ ch.max }} &middot; active {{ ch.active }}</p>
    {% if ch.examples %}<details><summary>examples</summary><ol>
      {% for e in ch.examples %}<li><span class="mono">{{ e.name }}</span> &middot; {{ e.score }} at ({{ e.y }}, {{ e.x }})</li>{% endfor %}
    </ol></details>{% endif %}
  </section>
{% endfor %}
</div>
</main>
</body>
</html>
"""
"""A layer page: a grid of channels, each with its top patches and statistics."""


def _render(template: str, page: dict[str, Any]) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template).render(page=page, csp=CSP, style=Markup(STYLE))


def render_index(page: dict[str, Any]) -> str:
    """Render the index page from its data (every value escaped).

    Args:
        page: ``title``, ``model``, ``k``, ``score``, ``num_images``, ``root``,
            ``layers`` (dicts with ``href``, ``name``, ``type``, ``channels``,
            ``spatial``, ``rf``, ``mean``, ``active``, ``preview``) and
            ``skipped`` (dicts with ``name``, ``reason``).

    Example:
        >>> html = render_index({"title": "t", "model": "m", "k": 9, "score": "max", "num_images": 3,
        ...                      "root": "", "layers": [], "skipped": [{"name": "<x>.png", "reason": "bad"}]})
        >>> "&lt;x&gt;.png" in html
        True
    """
    return _render(INDEX_TEMPLATE, page)


def render_layer(page: dict[str, Any]) -> str:
    """Render one layer page from its data (every value escaped).

    Args:
        page: ``title``, ``name``, ``type``, ``k``, ``score``, ``num_images``,
            ``spatial``, ``rf``, ``sheet_width``, ``prev``, ``next`` and
            ``channels`` (dicts with ``id``, ``channel``, ``image``, ``mean``,
            ``std``, ``max``, ``active`` and ``examples``: dicts with
            ``name``, ``score``, ``y``, ``x``).

    Example:
        >>> html = render_layer({"title": "t", "name": "<l>", "type": "Conv2d", "k": 1, "score": "max",
        ...     "num_images": 1, "spatial": "2x2", "rf": "3x3", "sheet_width": 64, "prev": None, "next": None,
        ...     "channels": []})
        >>> "&lt;l&gt;" in html and "Content-Security-Policy" in html
        True
    """
    return _render(LAYER_TEMPLATE, page)
