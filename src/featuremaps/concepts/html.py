"""The concepts page: one card per concept, in the atlas's look (its stylesheet), by :func:`featuremaps.pages.render_page`.

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

from .. import pages

if TYPE_CHECKING:
    from .concepts import Concepts

__all__ = ["CONCEPTS_TEMPLATE", "render_page", "render_concepts"]

CONCEPTS_TEMPLATE = "concepts.html"
"""The concepts page's template (in ``featuremaps/pages/templates``)."""


def render_page(page: dict[str, Any]) -> str:
    """Render the concepts page from plain data (every value escaped)."""
    width = max((int(c["width"]) for c in page["concepts"]), default=0)
    return pages.render_page(CONCEPTS_TEMPLATE, page=page, cell=max(width, 172) + 24)


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
