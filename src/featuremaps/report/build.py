"""Building the report: data first, then one template, then an atomic file."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._atomic import atomic_path
from ..errors import FeatureMapsError
from ..layers import LayerSelector
from .data import ReportOptions, colormap_table, encode_layers, photo_data_uri

__all__ = ["Report", "report", "render_report", "DEFAULT_CAM_METHODS"]

#: CAM methods shown by default: the gradient-based ones, which cost one
#: backward each, Eigen-CAM and plain CAM (skipped for models without a
#: GAP + linear head). Score-CAM and Ablation-CAM need a forward per channel;
#: ask for them with ``cam_methods=[...]``.
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "cam")


@dataclass
class Report:
    """A rendered report: its data and its HTML.

    Attributes:
        data: the plain data the page is rendered from.
        html: the self-contained page.
        seconds: how long building it took.

    Example:
        >>> import featuremaps as fm
        >>> rep = fm.report(layers="_blocks.15.*")            # doctest: +SKIP
        >>> rep.save("report.html"), len(rep.html) < 20e6     # doctest: +SKIP
    """

    data: dict[str, Any]
    html: str
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Size of the page in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page atomically to ``path`` (folders are created)."""
        target = Path(path)
        if target.is_dir():
            raise FeatureMapsError(f"cannot write the report to {str(target)!r}: it is a directory; pass a file path")
        with atomic_path(target) as tmp:
            tmp.write_text(self.html, encoding="utf-8")
        return target

    def _repr_html_(self) -> str:
        import html as _html

        return (
            "<iframe style='width:100%;height:720px;border:1px solid #ddd' sandbox='allow-scripts' "
            f"srcdoc=\"{_html.escape(self.html, quote=True)}\"></iframe>"
        )


def _as_model(model: Any, preprocess: Any) -> tuple[nn.Module, Any, str]:
    from ..models import load_model, preprocess_for

    if model is None or isinstance(model, (str, os.PathLike)):
        spec = "efficientnet_lite0" if model is None else model
        loaded = load_model(spec)
        return loaded.model, preprocess or loaded.preprocess, str(spec)
    if not isinstance(model, nn.Module):
        raise FeatureMapsError(f"model must be an nn.Module or a model spec string, got {type(model).__name__}")
    if preprocess is None:  # its own (a model from load_model), else ImageNet's; the model is left as it is
        preprocess = preprocess_for(model, guess=True)
    card = getattr(preprocess, "card", None)
    return model, preprocess, getattr(card, "name", None) or type(model).__name__


def _scan_line(img: Any, prep: Any) -> str:
    from ..medical import describe, image_meta

    meta = image_meta(img)
    if meta is None:
        return ""
    card = getattr(prep, "card", None)
    scale = 1.0
    if card is not None:
        from ..models import _resized_size

        new_w, _ = _resized_size(img.width, img.height, card.resize, *card.input_size)
        scale = img.width / new_w
    return describe(meta, scale)


def _image_name(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return getattr(image, "filename", None) and Path(image.filename).name or type(image).__name__


def _predictions(output: Any, preprocess: Any, k: int) -> list[dict[str, Any]]:
    from ..models import top_classes

    top = top_classes(output, getattr(preprocess, "card", None), k)
    return [{"index": i, "name": name, "p": p} for i, name, p in top]


def source_hash(text: str) -> str:
    """The CSP source expression for an inline ``<style>`` or ``<script>`` with this exact text.

    Example:
        >>> source_hash("")
        'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='
    """
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _json_for_script(data: Any) -> str:
    """JSON safe to embed inside a <script> element (no '</script>', no U+2028)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )


def _asset(name: str) -> str:
    return resources.files("featuremaps.report").joinpath(name).read_text(encoding="utf-8")


def render_html(data: dict[str, Any]) -> str:
    """Render the page from its data with the package's one template (autoescaped).

    Example:
        >>> meta = {"title": "<b>x</b>", "model": "m", "image": "i", "input": [3, 8, 8], "layers_total": 0,
        ...         "channels": 0, "generated": "today", "version": "0"}
        >>> html = render_html({"meta": meta, "layers": [], "predictions": [], "cams": None, "photo": "",
        ...                     "colormaps": {}})
        >>> "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
        True
    """
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_asset("template.html"))
    script = _asset("report.js")
    style = _asset("report.css")
    payload = _json_for_script(data)
    csp = (
        "default-src 'none'; img-src data: blob:; "
        f"style-src '{source_hash(style)}'; script-src '{source_hash(script)}'; "
        "base-uri 'none'; form-action 'none'"
    )
    return template.render(
        meta=data["meta"], predictions=data["predictions"], photo=data["photo"], csp=csp,
        has_cams=bool(data.get("cams")), has_drivers=bool(data.get("drivers")), style=_markup(style), script=_markup(script), payload=_markup(payload),
    )


def _markup(text: str) -> Any:
    from markupsafe import Markup

    return Markup(text)


def report(
    model: nn.Module | str | None = None,
    image: Any = None,
    *,
    preprocess: Callable[..., torch.Tensor] | None = None,
    layers: LayerSelector = None,
    top_k: int | None = None,
    max_tile: int = 32,
    cam_methods: Sequence[str] | None = DEFAULT_CAM_METHODS,
    cam_layer: Any = "auto",
    metrics: bool = True,
    classes: int = 5,
    title: str | None = None,
    max_bytes: int | str | None = "2GB",
    synthesize: LayerSelector | None = None,
    synth_steps: int = 128,
    synth_size: int = 96,
    atlas: str | os.PathLike[str] | None = None,
    atlas_href: str | None = None,
    photo_size: int = 448,
    drivers: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Build the interactive report for ``model`` on ``image``.

    Args:
        model: an ``nn.Module``, a model spec (``"torchvision:resnet50"``...)
            or ``None`` for the embedded pretrained EfficientNet-Lite0.
        image: anything :func:`~featuremaps.io.load_image` reads; ``None``:
            the shipped cat photo.
        preprocess: the model's preprocessing (default: the model card's).
        layers: which layers to show (default: every leaf layer with a
            spatial output).
        top_k: channels per layer (the most active ones; default all).
        max_tile: channel thumbnails are pooled to at most this size.
        cam_methods: CAM methods to show (``None`` or ``()``: no CAM section).
        cam_layer: the CAM target layer (``"auto"``: the last spatial one).
        metrics: compute faithfulness scores for the top class's CAMs.
        classes: how many top classes to list (CAMs are computed for each).
        title: the page title.
        max_bytes: the capture's memory budget.
        synthesize: layers (names or globs) whose shown channels also get an
            image synthesized to excite them (:func:`featuremaps.synthesize`),
            shown in the enlarged channel view. Off by default: it costs
            about ``synth_steps`` forward and backward passes per batch of
            channels.
        synth_steps: optimization steps per synthesized image.
        synth_size: synthesized image size in pixels.
        atlas: an atlas folder (:func:`featuremaps.build_atlas`, ``featuremaps
            atlas``) of the same model: the enlarged channel view then links
            to the channel's top dataset examples there.
        atlas_href: how the page should link to that folder (default: the
            ``atlas`` path as given; the CLI makes it relative to the page).
        photo_size: the embedded photo's longest side at most (pixels).
        drivers: how many channels of the CAM layer to show per class in
            "What drove this prediction" (:func:`~featuremaps.channel_relevance`;
            0: no such section).
        progress: called as ``progress(stage, done, total)``.

    Returns:
        A :class:`Report`; ``.save(path)`` writes the page.

    Example:
        >>> import featuremaps as fm
        >>> fm.report(top_k=16).save("cat-report.html")   # doctest: +SKIP
    """
    from ..capture import get_feature_maps
    from .._channels import channel_error
    from ..io import load_image, sample_image

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    net, prep, model_name = _as_model(model, preprocess)
    src = image if image is not None else sample_image("cat")
    img = load_image(src)
    x = prep(img)
    view = prep.view(img) if hasattr(prep, "view") else img
    try:
        maps = get_feature_maps(net, x, layers=layers, max_bytes=max_bytes)
    except Exception as exc:  # a 1-channel model given RGB (or the reverse): say so, with the fix
        clear = channel_error(exc, net, x, prep)
        if clear is None:
            raise
        raise clear from exc
    timings["capture"] = time.perf_counter() - t0
    options = ReportOptions(max_tile=max_tile, top_k=top_k)
    total = len(maps)
    done = [0]

    def tick(name: str) -> None:
        done[0] += 1
        if progress is not None:
            progress("layers", done[0], total)

    encoded = encode_layers(maps, options, tick)
    timings["layers"] = time.perf_counter() - t0 - timings["capture"]
    predictions = _predictions(maps.output, prep, classes)
    if atlas is not None:
        _add_atlas_links(encoded, atlas, atlas_href)
    if synthesize is not None:
        t1 = time.perf_counter()
        _add_synthesized(net, prep, maps, encoded, synthesize, synth_steps, synth_size, progress)
        timings["synthesis"] = time.perf_counter() - t1
    del maps
    cams = None
    if cam_methods:
        from .cams import cam_section

        t1 = time.perf_counter()
        lenient = tuple(cam_methods) == DEFAULT_CAM_METHODS  # defaults a model cannot use are skipped
        cams = cam_section(net, x, view, predictions, cam_methods, cam_layer, metrics, progress, lenient=lenient)
        timings["cams"] = time.perf_counter() - t1
    driving = None
    if drivers and predictions:
        from .drivers import driver_section

        t1 = time.perf_counter()
        picked = cams["layer"].split(", ") if cams else []
        driving = driver_section(net, x, predictions, picked[0] if len(picked) == 1 else cam_layer, encoded, drivers)
        timings["drivers"] = time.perf_counter() - t1
    meta = {
        "title": title or f"featuremaps: {model_name} on {_image_name(src)}",
        "model": model_name,
        "image": _image_name(src),
        "input": list(x.shape[1:]),
        "layers_total": len(encoded),
        "channels": sum(len(d["shown"]) for d in encoded),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": _version(),
    }
    scan = _scan_line(img, prep)
    if scan:
        meta["scan"] = scan  # a DICOM or windowed picture: modality, window, pixel size
    data = {
        "meta": meta,
        "photo": photo_data_uri(view, max_side=photo_size),
        "predictions": predictions,
        "layers": encoded,
        "cams": cams,
        "drivers": driving,
        "colormaps": colormap_table(["viridis", "inferno", "RdBu_r"]),
    }
    html = render_html(data)
    seconds = time.perf_counter() - t0
    timings["total"] = seconds
    return Report(data=data, html=html, seconds=seconds, timings=timings)


def _add_atlas_links(encoded: list[dict[str, Any]], atlas: str | os.PathLike[str], href: str | None) -> None:
    """Give each layer the atlas has an ``atlas`` link base (the page adds ``#c<channel>``)."""
    from ..atlas import load_atlas

    loaded = load_atlas(atlas)
    base = (href if href is not None else Path(atlas).as_posix()).rstrip("/")
    known = set(loaded.layers())
    for d in encoded:
        if d["name"] in known:
            page = loaded.channel_href(d["name"], loaded.channels(d["name"])[0]).split("#", 1)[0]
            d["atlas"] = f"{base}/{page}"


def _add_synthesized(
    model: nn.Module, preprocess: Any, maps: Any, encoded: list[dict[str, Any]], layers: LayerSelector,
    steps: int, size: int, progress: Callable[[str, int, int], None] | None,
) -> None:
    """Add ``synth`` (one JPEG data URI per shown channel) to the chosen layers' data."""
    from ..synthesis import synthesize as synth
    from ..visualize import selected_names

    wanted = set(selected_names(maps, layers))  # the usual "no captured map matches ... closest" error
    chosen = [d for d in encoded if d["name"] in wanted]
    total = sum(len(d["shown"]) for d in chosen)
    done = 0
    for d in chosen:
        targets = [f"{d['name']}:{c}" for c in d["shown"]]
        images = synth(model, targets, steps=steps, size=size, preprocess=preprocess, progress=False)
        if not isinstance(images, list):
            images = [images]
        d["synth"] = [photo_data_uri(im, quality=85, max_side=size) for im in images]
        done += len(targets)
        if progress is not None:
            progress("synthesis", done, total)


def render_report(*args: Any, **kwargs: Any) -> str:
    """The report page as a string (same arguments as :func:`report`).

    Example:
        >>> import featuremaps as fm
        >>> html = fm.render_report(top_k=8)     # doctest: +SKIP
    """
    return report(*args, **kwargs).html


def _version() -> str:
    from .. import __version__

    return __version__
