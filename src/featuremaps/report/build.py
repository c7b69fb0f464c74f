"""Building the report: data first, then one template, then an atomic file."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._atomic import atomic_path
from .._progress import Progress, ProgressArg, reporter
from .._version import __version__
from ..capture import get_feature_maps
from ..errors import FeatureMapsError, LayerNotFoundError
from ..io import load_image, sample_image
from ..layers import LayerSelector, closest_names
from ..medical import describe, image_meta
from ..models import channel_error, resized_size, resolve, top_classes
from ..pages import render_page, script_json, source_hash
from ..visualize import selected_names
from .cams import cam_section
from .concepts import concept_section, load_report_concepts, with_concept_layer
from .data import ReportOptions, colormap_table, encode_layers, photo_data_uri
from .drivers import PassRelevance, driver_section
from .scan import photo_fields
from .volume import VolumeOptions, is_volume, volume_data

__all__ = ["Report", "report", "render_report", "render_html", "source_hash", "DEFAULT_CAM_METHODS"]

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
    loaded = resolve("efficientnet_lite0" if model is None else model, preprocess, notice=True)
    return loaded.model, loaded.preprocess, loaded.name


def _scan_line(img: Any, prep: Any) -> str:
    meta = image_meta(img)
    if meta is None:
        return ""
    card = getattr(prep, "card", None)
    scale = 1.0
    if card is not None:
        new_w, _ = resized_size(img.width, img.height, card.resize, *card.input_size)
        scale = img.width / new_w
    return describe(meta, scale)


def _image_name(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return getattr(image, "filename", None) and Path(image.filename).name or type(image).__name__


def _predictions(output: Any, preprocess: Any, k: int) -> list[dict[str, Any]]:
    top = top_classes(output, getattr(preprocess, "card", None), k)
    return [{"index": i, "name": name, "p": p} for i, name, p in top]


def render_html(data: dict[str, Any]) -> str:
    """Render the page from its data with the report's template (autoescaped; see :mod:`featuremaps.pages`).

    Example:
        >>> meta = {"title": "<b>x</b>", "model": "m", "image": "i", "input": [3, 8, 8], "layers_total": 0,
        ...         "channels": 0, "generated": "today", "version": "0"}
        >>> html = render_html({"meta": meta, "layers": [], "predictions": [], "cams": None, "photo": "",
        ...                     "colormaps": {}})
        >>> "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
        True
    """
    return render_page(
        "report.html", meta=data["meta"], predictions=data["predictions"], photo=data["photo"],
        has_cams=bool(data.get("cams")), has_drivers=bool(data.get("drivers")),
        has_concepts=bool(data.get("concepts")), payload=script_json(data),
        photo_note=data.get("photo_note"), volume=data.get("volume"), medical_js=bool(data.get("scale") or data.get("volume")),
    )


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
    drivers: int = 8, concepts: Any = None, concepts_href: str | None = None,
    progress: ProgressArg = None,
) -> Report:
    """Build the interactive report for ``model`` on ``image``.

    Args:
        model: an ``nn.Module``, a model spec (``"torchvision:resnet50"``...)
            or ``None`` for the embedded pretrained EfficientNet-Lite0.
        image: anything :func:`~featuremaps.io.load_image` reads; ``None``:
            the shipped cat photo; a :class:`~featuremaps.Volume`: slices.
        preprocess: the model's preprocessing (default: the model card's).
        layers: which layers to show (default: every leaf layer with a
            spatial output).
        top_k: channels per layer (the most active ones; default all; a volume's slice viewer keeps 8).
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
        concepts: a concepts folder or :class:`~featuremaps.concepts.Concepts` of this model, shown in "What drove
            this prediction" (:mod:`.concepts`), linked as ``concepts_href`` (default: the path as given).
        progress: ``True`` for a progress bar (on a terminal or in a notebook),
            ``False``/``None`` for none, or a callable ``progress(stage, done,
            total)`` (see :mod:`featuremaps._progress`), called for the
            ``"layers"``, ``"synthesis"`` and ``"CAM methods"`` stages.

    Returns:
        A :class:`Report`; ``.save(path)`` writes the page.

    Example:
        >>> import featuremaps as fm
        >>> fm.report(top_k=16).save("cat-report.html")   # doctest: +SKIP
    """
    with reporter(progress, unit="steps") as tick:
        return _build(
            model, image, preprocess, layers, ReportOptions(max_tile=max_tile, top_k=top_k), cam_methods, cam_layer,
            metrics, classes, title, max_bytes, (synthesize, synth_steps, synth_size), atlas, atlas_href, photo_size,
            drivers, (concepts, concepts_href), tick,
        )


def _build(
    model: Any, image: Any, preprocess: Any, layers: LayerSelector, options: ReportOptions,
    cam_methods: Sequence[str] | None, cam_layer: Any, metrics: bool, classes: int, title: str | None,
    max_bytes: int | str | None, synthesis: tuple[LayerSelector | None, int, int],
    atlas: str | os.PathLike[str] | None, atlas_href: str | None, photo_size: int, drivers: int,
    concepts: tuple[Any, str | None], tick: Progress,
) -> Report:
    """:func:`report`'s work, each stage timed into ``Report.timings`` and reported to ``tick``."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if is_volume(image):  # a 3-D scan: slice viewer, 3-D maps and CAMs (report/volume.py)
        vopts = VolumeOptions(layers, options.top_k, options.max_tile, cam_methods, cam_layer, classes, title, max_bytes,
                              metrics)
        return _volume_report(model, image, preprocess, vopts, tick, t0)
    net, prep, model_name, src, img, x, view = _inputs(model, preprocess, image)
    linked = load_report_concepts(net, *concepts) if concepts[0] is not None else None  # checked first
    maps = _capture(net, x, prep, with_concept_layer(layers, linked), max_bytes)
    timings["capture"] = time.perf_counter() - t0
    tick = _serialized(tick)
    # The layers' encoding is mostly single-threaded Python and zlib: it runs beside the CAMs' PyTorch work, which
    # does not need it (only "what drove this prediction" does, after the CAMs).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featuremaps-layers") as pool:
        pending = pool.submit(_timed, encode_layers, maps, options, tick)
        predictions = _predictions(maps.output, prep, classes)
        concept_data = concept_section(net, x, predictions, linked) if linked is not None else None

        def layers_done() -> list[dict[str, Any]]:
            encoded, timings["layers"] = pending.result()
            return encoded

        cams, driving = _explanations(
            net, x, view, predictions, layers_done, cam_methods, cam_layer, metrics, drivers, tick, timings
        )
        encoded = layers_done()
    _add_extras(net, prep, maps, encoded, atlas, atlas_href, synthesis, tick, timings)
    del maps
    data = {
        "meta": _meta(title, model_name, src, img, prep, x, encoded),
        **photo_fields(net, x, img, prep, view, photo_size, cams, encoded),  # a scan: scale bar, mm per CAM cell
        "predictions": predictions,
        "layers": encoded,
        "cams": cams,
        "drivers": driving,
        "concepts": concept_data,
        "colormaps": colormap_table(["viridis", "inferno", "RdBu_r"]),
    }
    html = render_html(data)
    timings["total"] = seconds = time.perf_counter() - t0
    return Report(data=data, html=html, seconds=seconds, timings=timings)


def _inputs(model: Any, preprocess: Any, image: Any) -> tuple[nn.Module, Any, str, Any, Any, torch.Tensor, Any]:
    """The model, its preprocessing and name; the image as given, loaded, as a batch and as the model sees it."""
    net, prep, model_name = _as_model(model, preprocess)
    src = image if image is not None else sample_image("cat")
    img = load_image(src)
    x = prep(img)
    return net, prep, model_name, src, img, x, prep.view(img) if hasattr(prep, "view") else img


def _volume_report(model: Any, vol: Any, preprocess: Any, opts: VolumeOptions,
                   progress: Callable[[str, int, int], None] | None, t0: float) -> Report:
    """The report on a 3-D scan (:mod:`featuremaps.report.volume`)."""
    data = volume_data(model, vol, preprocess, opts, progress)
    return Report(data=data, html=render_html(data), seconds=time.perf_counter() - t0)


def _add_extras(
    net: nn.Module, prep: Any, maps: Any, encoded: list[dict[str, Any]], atlas: str | os.PathLike[str] | None,
    atlas_href: str | None, synthesis: tuple[LayerSelector | None, int, int], tick: Progress,
    timings: dict[str, float],
) -> None:
    """The atlas links and the synthesized images, when asked for (the synthesis timed into ``timings``)."""
    if atlas is not None:
        _add_atlas_links(encoded, atlas, atlas_href)
    if synthesis[0] is not None:
        t1 = time.perf_counter()
        _add_synthesized(net, prep, maps, encoded, *synthesis, tick)
        timings["synthesis"] = time.perf_counter() - t1


def _serialized(progress: Progress) -> Progress:
    """``progress`` called by one thread at a time (the layers' encoding reports from its own thread)."""
    lock = threading.Lock()

    def report(stage: str, done: int, total: int | None) -> None:
        with lock:
            progress(stage, done, total)

    return report


def _timed(work: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``work(*args)`` and the seconds it took."""
    t1 = time.perf_counter()
    return work(*args), time.perf_counter() - t1


def _explanations(
    net: nn.Module, x: torch.Tensor, view: Any, predictions: list[dict[str, Any]],
    encoded: Callable[[], list[dict[str, Any]]],
    cam_methods: Sequence[str] | None, cam_layer: Any, metrics: bool, drivers: int,
    progress: Progress, timings: dict[str, float],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The CAM section, then "what drove this prediction" on the CAM's layer (each timed into ``timings``).

    ``encoded()`` gives the encoded layers (waiting for them), which the second links to.

    The second rides the first's pass (:class:`~.drivers.PassRelevance`); without CAMs it makes its own.
    """
    cams = None
    rider = PassRelevance(net, cam_layer) if drivers and predictions and cam_methods else None
    if cam_methods:
        t1 = time.perf_counter()
        lenient = tuple(cam_methods) == DEFAULT_CAM_METHODS  # defaults a model cannot use are skipped
        cams = cam_section(net, x, view, predictions, cam_methods, cam_layer, metrics, progress, lenient=lenient,
                           riders=[rider] if rider is not None else ())
        timings["cams"] = time.perf_counter() - t1
    driving = None
    if drivers and predictions:
        t1 = time.perf_counter()
        picked = cams["layer"].split(", ") if cams else []
        layer = picked[0] if len(picked) == 1 else cam_layer
        driving = driver_section(net, x, predictions, layer, encoded(), drivers, shared=rider if cams else None)
        timings["drivers"] = time.perf_counter() - t1
    return cams, driving


def _capture(net: nn.Module, x: torch.Tensor, prep: Any, layers: LayerSelector, max_bytes: int | str | None) -> Any:
    """The maps of ``layers``; a channel-count mismatch (RGB to a 1-channel model) is said with its fix."""
    try:
        return get_feature_maps(net, x, layers=layers, max_bytes=max_bytes)
    except Exception as exc:
        clear = channel_error(exc, net, x, prep)
        if clear is None:
            raise
        raise clear from exc


def _meta(
    title: str | None, model_name: str, src: Any, img: Any, prep: Any, x: torch.Tensor, encoded: list[dict[str, Any]]
) -> dict[str, Any]:
    """The page's header: title, model, image, input shape, counts, time, version (and the scan, if any)."""
    meta = {
        "title": title or f"featuremaps: {model_name} on {_image_name(src)}",
        "model": model_name,
        "image": _image_name(src),
        "input": list(x.shape[1:]),
        "layers_total": len(encoded),
        "channels": sum(len(d["shown"]) for d in encoded),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
    }
    scan = _scan_line(img, prep)
    if scan:
        meta["scan"] = scan  # a DICOM or windowed picture: modality, window, pixel size
    return meta


def _add_atlas_links(encoded: list[dict[str, Any]], atlas: str | os.PathLike[str], href: str | None) -> None:
    """Give each layer the atlas has an ``atlas`` link base (the page adds ``#c<channel>``)."""
    from ..atlas import load_atlas  # lazy: the atlas package only for reports that link one (start-up time)

    loaded = load_atlas(atlas)
    base = (href if href is not None else Path(atlas).as_posix()).rstrip("/")
    known = set(loaded.layers())
    for d in encoded:
        if d["name"] in known:
            page = loaded.channel_href(d["name"], loaded.channels(d["name"])[0]).split("#", 1)[0]
            d["atlas"] = f"{base}/{page}"


def _add_synthesized(
    model: nn.Module, preprocess: Any, maps: Any, encoded: list[dict[str, Any]], layers: LayerSelector,
    steps: int, size: int, progress: Progress,
) -> None:
    """Add ``synth`` (one JPEG data URI per shown channel) to the chosen layers' data."""
    from ..synthesis import synthesize  # lazy: synthesis only when asked for (start-up time)

    wanted = set(selected_names(maps, layers))  # the usual "no captured map matches ... closest" error
    chosen = [d for d in encoded if d["name"] in wanted]
    total = sum(len(d["shown"]) for d in chosen)
    done = 0
    for d in chosen:
        targets = [f"{d['name']}:{c}" for c in d["shown"]]
        images = synthesize(model, targets, steps=steps, size=size, preprocess=preprocess, progress=False)
        if not isinstance(images, list):
            images = [images]
        d["synth"] = [photo_data_uri(im, quality=85, max_side=size) for im in images]
        done += len(targets)
        progress("synthesis", done, total)


def render_report(*args: Any, **kwargs: Any) -> str:
    """The report page as a string (same arguments as :func:`report`).

    Example:
        >>> import featuremaps as fm
        >>> html = fm.render_report(top_k=8)     # doctest: +SKIP
    """
    return report(*args, **kwargs).html


def _captured(maps: Any, layers: LayerSelector) -> list[str]:
    """The captured layers that ``layers`` (names or globs) names; none is an error naming the closest."""
    if layers is None:
        return list(maps)
    patterns = [layers] if isinstance(layers, str) else list(layers)  # type: ignore[arg-type]
    names = [n for n in maps if any(n == p or fnmatch.fnmatchcase(n, str(p)) for p in patterns)]
    if not names:
        close = closest_names(str(patterns[0]), list(maps))
        raise LayerNotFoundError(
            f"no captured map matches {layers!r}" + (f"; closest: {', '.join(close)}" if close else "")
        )
    return names
