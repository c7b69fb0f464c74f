"""The report on a 3-D scan: a slice viewer of the input, its 3-D feature maps and 3-D CAMs.

``fm.report(model_3d, fm.load_volume(path))`` builds the same page as for a
picture (predictions, the layer view, statistics across depth), with:

* a slice viewer of the model input (axial, coronal, sagittal; a slider per
  view), drawn at its native voxels (nearest neighbour, never smoothed),
  its aspect following the voxel spacing, with a scale bar in mm;
* 3-D CAMs of the top classes (every requested method that applies to a
  3-D layer), each overlaid on the slices of the same viewer, with the top
  class's faithfulness scores (deletion/insertion AUC, average drop, voxels
  ranked over the whole volume);
* any channel of a 3-D layer overlaid on the same slices (the most active
  channels of each layer, one colour scale per layer: :mod:`.volume_maps`);
* 3-D feature maps in the layer view as their maximum over depth (the
  summary photo is the input's maximum over depth, so the two align).

The volume travels once, as one PNG "sprite" of its axial slices; the page
reslices it for the coronal and sagittal views. CAMs and feature maps travel
the same way.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._version import __version__
from ..attribution import cams as run_cams
from ..attribution import Faithfulness, get_cam
from ..capture import get_feature_maps
from ..errors import FeatureMapsError
from ..layers import LayerSelector
from ..models import LoadedModel, load_model, preprocess_for, top_classes
from ..render import overlay
from ..render.scalebar import draw_scale_bar, nice_scale
from ..volume import Volume
from .cams import SCORE_LABELS
from .data import ReportOptions, colormap_table, encode_layers, png_data_uri
from .sprites import volume_sprite
from .volume_maps import MAP_CHANNELS, volume_maps

__all__ = ["VolumeOptions", "is_volume", "volume_data", "volume_input", "volume_sprite", "slice_overlays", "VIEWS"]

#: The three views: name, the tensor axis the slider moves along, the
#: (row, column) axes of a slice, and whether rows are flipped (superior at the top).
VIEWS = (("axial", 0, (1, 2), False), ("coronal", 1, (0, 2), True), ("sagittal", 2, (0, 1), True))
_VIEW_WIDTH = 256  # the views are drawn at least this wide (an integer number of screen pixels per voxel)


@dataclass(frozen=True)
class VolumeOptions:
    """The report options that apply to a volume (see :func:`featuremaps.report`)."""

    layers: LayerSelector = None
    top_k: int | None = None
    max_tile: int = 32
    cam_methods: Sequence[str] | None = ("gradcam",)
    cam_layer: Any = "auto"
    classes: int = 5
    title: str | None = None
    max_bytes: int | str | None = "2GB"
    metrics: bool = True


def is_volume(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`~featuremaps.Volume` (the report then shows slices).

    Example:
        >>> is_volume("cat.jpg")
        False
    """
    return isinstance(obj, Volume)


def volume_input(vol: Volume, preprocess: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """The model input ``(1, C, D, H, W)``: ``vol.data`` as it is, or ``preprocess(vol)``.

    Example:
        >>> import numpy as np, torch
        >>> vol = Volume(torch.zeros(1, 4, 8, 8), (2.5, 0.5, 0.5), np.eye(4), ("S", "P", "L"), "demo")
        >>> tuple(volume_input(vol).shape)
        (1, 1, 4, 8, 8)
    """
    x = vol.data[None].float() if preprocess is None else preprocess(vol)
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else f"a tensor of shape {tuple(x.shape)}"
        raise FeatureMapsError(
            f"preprocess for the volume {vol.source!r} returned {got}; it must return a (1, C, D, H, W) tensor "
            "(or (C, D, H, W))"
        )
    return x if x.ndim == 5 else x[None]


def _display(vol: Volume, x: torch.Tensor, default_input: bool) -> tuple[np.ndarray, str]:
    """The input's first channel as uint8 for the viewer, and how its grey levels were chosen."""
    v = x[0, 0].detach().float().cpu().numpy()
    if default_input and vol.window is not None:
        lo, hi, how = 0.0, 1.0, f"window {vol.window[0]:g}/{vol.window[1]:g}{_units(vol)}"
    elif default_input and vol.file_window is not None:
        c, w = vol.file_window
        lo, hi, how = c - w / 2, c + w / 2, f"the file's window {c:g}/{w:g}{_units(vol)}"
    else:
        finite = v[np.isfinite(v)]
        lo, hi = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) if finite.size else (0, 1)
        how = "the 0.5th to 99.5th percentile of the model input"
    span = hi - lo if hi > lo else 1.0
    unit = np.clip((np.nan_to_num(v) - lo) / span, 0.0, 1.0)
    return (unit * 255).round().astype(np.uint8), how


def _units(vol: Volume) -> str:
    return f" {vol.units}" if vol.units else ""


def _views(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[dict[str, Any]]:
    """Per view: slices, native rows and columns, drawn size (aspect from the spacing) and its scale bar."""
    out = []
    for name, axis, (r, c), flip in VIEWS:
        rows, cols = shape[r], shape[c]
        k = max(1, round(_VIEW_WIDTH / cols))  # screen pixels per voxel across
        width, height = cols * k, max(1, round(rows * k * spacing[r] / spacing[c]))
        bar = nice_scale(spacing[c] / k, width)
        out.append({
            "name": name, "axis": axis, "n": shape[axis], "rows": rows, "cols": cols, "flip": flip,
            "width": width, "height": height, "mm": [spacing[r], spacing[c]], "bar": bar.as_dict(),
        })
    return out


def _volume_cams(
    net: nn.Module, x: torch.Tensor, predictions: list[dict[str, Any]], methods: Sequence[str] | None, layer: Any,
    metrics: bool = False,
) -> dict[str, Any] | None:
    """Each method's 3-D CAM for each top class (one batch of one input copy per class), as sprites; with
    ``metrics``, the top class's faithfulness scores per method (:func:`volume_scores`)."""
    if not methods or not predictions:
        return None
    names = list(dict.fromkeys(get_cam(m).name for m in methods))
    classes = [p["index"] for p in predictions]
    xb = x.expand(len(classes), *x.shape[1:])
    results = run_cams(net, xb, names, target=classes, layer=layer, lenient=True)
    if not len(results):
        return None
    used = list(results)
    entries = []
    for i, p in enumerate(predictions):
        maps = {}
        for m in used:
            heat = results[m].heatmap[i].detach().float().cpu().numpy()
            maps[m] = volume_sprite((np.clip(np.nan_to_num(heat), 0, 1) * 255).round().astype(np.uint8))[0]
        entries.append({"index": p["index"], "name": p["name"], "maps": maps})
    first = results[used[0]]
    scores = volume_scores(net, x, classes[0], {m: results[m].heatmap[:1] for m in used}) if metrics else None
    return {
        "layer": ", ".join(first.layers), "methods": used, "classes": entries,
        "skipped": [f"{m} ({e})" for m, e in results.skipped.items()], "scores": scores,
        "score_labels": list(SCORE_LABELS.values()), "score_steps": SCORE_STEPS,
    }


#: Deletion and insertion steps of the volume report's faithfulness scores (as the picture report's).
SCORE_STEPS = 10
_SCORE_VOXELS = 1 << 22  # voxels per batch of perturbed volumes (at most 32 volumes)


def volume_scores(
    net: nn.Module, x: torch.Tensor, target: int, heat: dict[str, torch.Tensor], steps: int = SCORE_STEPS,
) -> dict[str, dict[str, float]]:
    """Faithfulness of each 3-D CAM for ``target``: deletion and insertion AUC and average drop (probability).

    Voxels are removed (inserted) in decreasing heat order over the whole volume (D, H, W), from one
    unperturbed forward (:class:`~featuremaps.Faithfulness`), in batches of at most 4M voxels.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
        ...                     nn.Flatten(), nn.Linear(2, 2))
        >>> s = volume_scores(net, torch.rand(1, 1, 4, 6, 5), 1, {"gradcam": torch.ones(1, 4, 6, 5)})
        >>> s["gradcam"]["average drop % \u2193"]   # keeping every voxel drops nothing
        0.0
    """
    voxels = max(1, int(x[0].numel()))
    check = Faithfulness(net, x[:1], target, batch_size=max(1, min(32, _SCORE_VOXELS // voxels)))
    out = {}
    for method, h in heat.items():
        values = {
            "deletion_auc": check.deletion_auc(h, steps=steps),
            "insertion_auc": check.insertion_auc(h, steps=steps),
            "average_drop": check.average_drop(h, reduction="none"),
        }
        out[method] = {label: float(values[key][0]) for key, label in SCORE_LABELS.items()}
    return out


def _model(model: Any) -> tuple[nn.Module, str, Any]:
    """The network, its name and its card (class names): a module's from :func:`~featuremaps.load_model` if it
    made it, a :class:`~featuremaps.LoadedModel`'s own (the CLI's ``--classes``), or a spec's."""
    if isinstance(model, nn.Module):
        return model, type(model).__name__, getattr(preprocess_for(model), "card", None)
    if model is None:
        raise FeatureMapsError("a volume needs a 3-D model: pass fm.report(model_3d, volume) (an nn.Module or "
                               "a 'module:factory' spec)")
    if isinstance(model, LoadedModel):
        return model.model, model.name, model.card
    loaded = load_model(model)
    return loaded.model, str(model), getattr(loaded.preprocess, "card", None)


def volume_data(
    model: Any, vol: Volume, preprocess: Callable[..., torch.Tensor] | None, opts: VolumeOptions,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """The report's data for a 3-D ``model`` on ``vol`` (rendered by :func:`featuremaps.report.render_html`).

    Example:
        >>> import featuremaps as fm, numpy as np, torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
        ...                     nn.Flatten(), nn.Linear(2, 2))
        >>> vol = fm.Volume(torch.rand(1, 4, 6, 5), (3.0, 1.0, 1.0), np.eye(4), ("S", "P", "L"), "demo")
        >>> data = volume_data(net, vol, None, VolumeOptions(classes=2))
        >>> [v["n"] for v in data["volume"]["views"]], data["volume"]["cams"]["methods"]
        ([4, 6, 5], ['gradcam'])
    """
    net, name, card = _model(model)
    x = volume_input(vol, preprocess).to(next(net.parameters(), torch.empty(0)).device)
    maps = get_feature_maps(net, x, layers=opts.layers, max_bytes=opts.max_bytes)
    encoded = encode_layers(maps, ReportOptions(max_tile=opts.max_tile, top_k=opts.top_k))
    predictions = [{"index": i, "name": n, "p": p} for i, n, p in top_classes(maps.output, card, opts.classes)]
    feature_maps = volume_maps(maps, channels=opts.top_k or MAP_CHANNELS)  # top_k: also the viewer's
    del maps
    shape = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
    sd, sh, sw = (float(s) * vs / xs for s, vs, xs in zip(vol.spacing, vol.shape, shape))  # resampled: scaled
    spacing = (sd, sh, sw)
    grey, how = _display(vol, x, preprocess is None)
    sprite, cols = volume_sprite(grey)
    cams = _volume_cams(net, x, predictions, opts.cam_methods, opts.cam_layer, opts.metrics)
    if progress is not None:
        progress("CAM methods", 1, 1)
    source = Path(vol.source).name or vol.source
    voxel = " \u00d7 ".join(f"{s:.3g}" for s in spacing)
    scan = " \u00b7 ".join([*([vol.modality] if vol.modality else []), f"voxel {voxel} mm (D \u00d7 H \u00d7 W)",
                            f"shown with {how}"])
    meta = {
        "title": opts.title or f"featuremaps: {name} on {source}", "model": name, "image": source,
        "input": list(x.shape[1:]), "layers_total": len(encoded), "channels": sum(len(d["shown"]) for d in encoded),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "version": __version__,
        "scan": scan,
    }
    mip = grey.max(axis=0)
    volume = {
        "shape": list(shape), "spacing": list(spacing), "sprite": sprite, "cols": cols, "views": _views(shape, spacing),
        "display": how, "cams": cams, "orientation": "".join(vol.orientation), "maps": feature_maps,
    }
    return {
        "meta": meta, "photo": png_data_uri(np.stack([mip] * 3, axis=-1)),
        "photo_note": f"The input's maximum over its {shape[0]} axial slices (as the 3-D maps below are shown); "
                      "the slice viewer shows every slice.",
        "scale": None, "predictions": predictions, "layers": encoded, "cams": None, "drivers": None,
        "volume": volume, "colormaps": colormap_table(["viridis", "inferno", "RdBu_r"]),
    }


def slice_overlays(folder: Path, vol: Volume, heat: dict[str, torch.Tensor], alpha: float = 0.5) -> list[Path]:
    """``cam_<method>_<view>.png``: each 3-D CAM over the middle axial, coronal and sagittal slice of ``vol``.

    Each picture is drawn as the report's slice viewer draws it: voxels enlarged by an integer factor (nearest
    neighbour, at least 256 pixels wide), rows stretched so that a pixel is as many mm tall as wide (the voxel
    spacing), and a scale bar in mm (:func:`~featuremaps.render.scalebar.draw_scale_bar`).

    Args:
        folder: where to write.
        vol: the volume the model took as it is (``heat`` has its D, H, W).
        heat: ``{method: (D, H, W) heatmap in [0, 1]}`` (one volume-wide scale: the colours compare across views).
        alpha: the heatmap's opacity.

    Example:
        >>> import numpy as np, torch, tempfile
        >>> vol = Volume(torch.rand(1, 4, 6, 5), (3.0, 1.0, 1.0), np.eye(4), ("S", "P", "L"), "demo")
        >>> [p.name for p in slice_overlays(Path(tempfile.mkdtemp()), vol, {"gradcam": torch.rand(4, 6, 5)})]
        ['cam_gradcam_axial.png', 'cam_gradcam_coronal.png', 'cam_gradcam_sagittal.png']
    """
    written = []
    views = _views(vol.shape, vol.spacing)
    for method, h in heat.items():
        values = h.detach().float().cpu().numpy()
        for (name, axis, _, flip), view in zip(VIEWS, views):
            k = vol.shape[axis] // 2
            plane = np.take(values, k, axis=axis)
            picture = overlay(vol.slice(k, axis=name), plane[::-1].copy() if flip else plane, alpha=alpha,
                              vmin=0.0, vmax=1.0)
            path = folder / f"cam_{method}_{name}.png"
            slice_picture(picture, view).save(path)
            written.append(path)
    return written


def slice_picture(picture: Image.Image, view: dict[str, Any]) -> Image.Image:
    """A slice at its native voxels, drawn at a view's size (:data:`VIEWS`) with the view's scale bar.

    Example:
        >>> from PIL import Image
        >>> view = _views((4, 6, 5), (3.0, 1.0, 1.0))[0]
        >>> slice_picture(Image.new("RGB", (5, 6)), view).size, view["bar"]["px"]
        ((255, 306), 51)
    """
    big = picture.convert("RGB").resize((view["width"], view["height"]), Image.Resampling.NEAREST)
    return draw_scale_bar(big, view["mm"][1] * view["cols"] / view["width"])[0]
