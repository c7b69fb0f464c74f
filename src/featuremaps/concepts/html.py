"""The concepts page: one card per concept, in the atlas's look (its stylesheet, head and policy).

Every value is escaped (Jinja2 autoescaping); the page loads nothing from the
network and runs no script (the atlas's Content-Security-Policy).

Example:
    >>> page = render_page({"title": "<b>", "model": "m", "layer": "l", "num_images": 0, "root": "",
    ...                     "explained": "0", "negative": "0%", "k": 0, "concepts": [], "skipped": [], "sample": 0})
    >>> "&lt;b&gt;" in page and "<b>" not in page
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atlas.html import _FOOT, _HEAD, _render

if TYPE_CHECKING:
    from .concepts import Concepts

__all__ = ["CONCEPTS_TEMPLATE", "render_page", "render_concepts"]

CONCEPTS_TEMPLATE = _HEAD + """<body>
<a class="skip" href="#concepts">Skip to the concepts</a>
<header class="top">
  <div class="brand">featuremaps concepts</div>
  <h1>{{ page.title }}</h1>
  <p class="sub">layer <span class="mono">{{ page.layer }}</span> &middot; {{ page.concepts | length }} concepts
    &middot; {{ page.num_images }} images{% if page.root %} from <span class="mono">{{ page.root }}</span>{% endif %}
    &middot; the concepts explain {{ page.explained }} of the activations of {{ page.sample }} sampled positions
    {%- if page.negative != "0%" %} (their negative part, {{ page.negative }}, is left out){% endif %}</p>
  <p class="hint">A concept is a mix of the layer's channels that often fires together, found in the data by
    non-negative matrix factorization: every position's activations are a sum of concepts, each with its own
    strength. Per concept: {% if page.k %}the {{ page.k }} image patches where it is strongest, {% endif %}the
    channels it is made of (their weights){% if page.k %}, and how strong it is over all images (<i>active</i>: the
    share of positions where it is present){% endif %}.</p>
</header>
<main class="atlas-main" id="concepts" tabindex="-1">
<div class="ch-grid">
{% for c in page.concepts %}
  <article class="ch" id="{{ c.id }}" aria-labelledby="{{ c.id }}-h">
    <h2 id="{{ c.id }}-h"><a href="#{{ c.id }}">concept {{ c.number }}</a></h2>
    {% if c.image %}<div class="figs"><figure><img src="{{ c.image }}" width="{{ c.width }}" height="{{ c.height }}"
      loading="lazy" {% if c.image.endswith(".png") %}class="px" {% endif %}alt="Top {{ c.examples }} patches of concept {{ c.number }}">
      <figcaption>top {{ c.examples }}{% if c.href %} &middot; <a href="{{ c.href }}">examples</a>{% endif %}</figcaption></figure></div>
    {% elif not c.examples %}<p class="empty">no examples</p>{% endif %}
    <dl class="scores"><dt>mean</dt><dd>{{ c.mean }}</dd><dt>active</dt><dd>{{ c.active }}</dd></dl>
    <details><summary>channels</summary><ol>
      {% for ch in c.channels %}<li>channel {{ ch.channel }} &middot; {{ ch.weight }}</li>{% endfor %}
    </ol></details>
  </article>
{% endfor %}
</div>
</main>
{% if page.skipped %}
<section class="card" aria-labelledby="skipped-h">
  <h2 id="skipped-h">Skipped images ({{ page.skipped | length }})</h2>
  <ul>{% for s in page.skipped %}<li><span class="mono">{{ s.name }}</span>: {{ s.reason }}</li>{% endfor %}</ul>
</section>
{% endif %}
""" + _FOOT.replace("its atlas folder", "its folder")
"""The concepts page."""


def render_page(page: dict[str, Any]) -> str:
    """Render the concepts page from plain data (every value escaped)."""
    width = max((int(c["width"]) for c in page["concepts"]), default=0)
    return _render(CONCEPTS_TEMPLATE, page, max(width, 172) + 24)


def _num(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3g}"


def render_concepts(concepts: Concepts, folder: Path) -> str:
    """The page of ``concepts`` being saved in ``folder`` (which already holds ``atlas/`` when they have examples)."""
    atlas = concepts.atlas
    cards = []
    for k in range(concepts.n_concepts):
        image, width, height, examples, href = None, 0, 0, 0, None
        mean = active = "n/a"
        if atlas is not None:
            examples = len(atlas.top_examples("concepts", k))
            st = atlas.stats("concepts")
            mean, active = _num(float(st.mean[k])), f"{100 * float(st.active_fraction[k]):.0f}%"
            href = "atlas/" + atlas.channel_href("concepts", k)
            for ext in ("png", "jpg"):
                path = folder / "atlas" / "patches" / "000" / f"{k}.{ext}"
                if path.is_file():
                    from PIL import Image

                    with Image.open(path) as sheet:
                        width, height = sheet.size
                    image = path.relative_to(folder).as_posix()
        cards.append({
            "id": f"k{k}", "number": k, "image": image, "width": width, "height": height, "examples": examples,
            "href": href, "mean": mean, "active": active,
            "channels": [{"channel": c, "weight": f"{w:.2f}"} for c, w in concepts.top_channels(k, 8) if w > 0],
        })
    return render_page({
        "title": f"Concepts of {concepts.model or 'a model'}", "model": concepts.model, "layer": concepts.layer,
        "num_images": concepts.num_images, "root": concepts.root or "", "sample": concepts.sample_size,
        "explained": f"{max(0.0, 1 - concepts.relative_error ** 2):.0%}",
        "negative": f"{concepts.negative_share:.0%}",
        "k": atlas.k if atlas is not None else 0, "concepts": cards,
        "skipped": [{"name": n, "reason": r} for n, r in concepts.skipped],
    })
