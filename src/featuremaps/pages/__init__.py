"""The package's HTML pages: one base template, one template file per page, one :func:`render_page`.

Every page featuremaps writes (the report, the atlas's index and layer pages, the concepts page, the index of
a saved maps folder) is a template in ``featuremaps/pages/templates/`` that extends ``base.html``; their
stylesheets and the report's script are files in ``featuremaps/pages/static/``, read with :func:`asset`.
The rules:

* Every value is HTML-escaped (Jinja2 autoescaping); only :func:`asset` text and :func:`script_json` output
  are inserted as they are.
* ``base.html`` owns the head (charset, viewport, no referrer, the Content-Security-Policy) and the footer;
  a page fills the ``title``, ``style``, ``body`` and ``footer`` blocks, and ``img_src`` when its images are
  not files next to it.
* The policy is computed from the rendered page: ``default-src 'none'``, the page's ``img-src``, and the
  SHA-256 hash of each inline ``<style>`` and ``<script>`` element. No ``'unsafe-inline'``, no remote loads;
  a page without a script gets no ``script-src``, so none can run.

Example:
    >>> html = render_page("maps_index.html", rows=[("<x>", "layers/0.png", "a note")])
    >>> "&lt;x&gt;" in html and "<x>" not in html and "style-src 'sha256-" in html
    True
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from importlib import resources
from typing import Any

__all__ = ["render_page", "asset", "source_hash", "content_security_policy", "script_json"]

_POLICY_SLOT = "featuremaps-policy-slot"  # replaced by the hashes once the page is rendered (first occurrence)
_INLINE = re.compile(r"<(style|script)>(.*?)</\1>", re.S)


def source_hash(text: str) -> str:
    """The CSP source expression for an inline ``<style>`` or ``<script>`` with this exact text.

    Example:
        >>> source_hash("")
        'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='
    """
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def content_security_policy(
    styles: list[str] | tuple[str, ...] = (), scripts: list[str] | tuple[str, ...] = (), img_src: str = "'self' data:"
) -> str:
    """A page's policy: nothing by default, these images, and exactly these inline styles and scripts.

    Example:
        >>> content_security_policy(["p {}"]).split("; ")[1:3]
        ["img-src 'self' data:", "style-src 'sha256-SNJDlN1Iy2mnt7DOjQIyDb2LQE6O5PQiSZomcdzawQ4='"]
    """
    parts = ["default-src 'none'", f"img-src {img_src}"]
    parts += [f"{directive} {_sources(list(texts))}" for directive, texts in (("style-src", styles),
              ("script-src", scripts)) if texts]
    return "; ".join([*parts, "base-uri 'none'", "form-action 'none'"])


@functools.lru_cache(maxsize=None)
def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def asset(name: str) -> str:
    """The text of a file in ``featuremaps/pages/static/`` (a stylesheet or a script), inserted as it is.

    Example:
        >>> "--accent" in asset("report.css")
        True
    """
    return _read(f"static/{name}")


def script_json(data: Any) -> Any:
    """``data`` as JSON that is safe inside a ``<script type="application/json">`` element (as markup).

    ``<``, ``>`` and ``&`` are written as ``\\u003c``-style escapes, so the text can never close the element;
    U+2028 and U+2029 too. NaN and infinity are refused (JSON has neither).

    Example:
        >>> str(script_json({"a": "</script>"}))
        '{"a":"\\\\u003c/script\\\\u003e"}'
    """
    from markupsafe import Markup

    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return Markup(
        text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: _read(f"templates/{name}")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.globals["asset"] = lambda name: Markup(asset(name))
    return env


def render_page(template: str, /, **data: Any) -> str:
    """Render one of the package's pages with its data (every value escaped) and seal it with its policy.

    Args:
        template: the page's file name in ``featuremaps/pages/templates/`` (``"report.html"``,
            ``"atlas_index.html"``, ``"atlas_layer.html"``, ``"concepts.html"``, ``"maps_index.html"``).
        **data: the names the template uses.

    Returns:
        The page, whose Content-Security-Policy lists the hash of each of its inline styles and scripts.

    Example:
        >>> html = render_page("maps_index.html", rows=[])
        >>> "0 layers" in html and "script-src" not in html
        True
    """
    from markupsafe import Markup

    html = str(_environment().get_template(template).render(**data, policy=Markup(_POLICY_SLOT)))
    found = _INLINE.findall(html)
    styles = [text for tag, text in found if tag == "style"]
    scripts = [text for tag, text in found if tag == "script"]
    hashes = "".join(
        f"{directive} {_sources(texts)}; " for directive, texts in (("style-src", styles), ("script-src", scripts))
        if texts
    )
    return html.replace(_POLICY_SLOT, hashes, 1)  # the base template's meta tag comes before any data


def _sources(texts: list[str]) -> str:
    return " ".join(f"'{source_hash(text)}'" for text in dict.fromkeys(texts))
