"""The report's CAM section: heatmaps per method and class, with faithfulness scores."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..attribution import (
    AttributionError, PerturbationCAM, average_drop, create_cam, deletion_auc, get_cam, insertion_auc,
)
from .data import png_data_uri

__all__ = ["cam_section", "SCORE_LABELS"]

#: The faithfulness scores shown, with the direction that is better. (ROAD is
#: in the library and the ``cam`` command; its imputation is too slow for a
#: page that should build in seconds.)
SCORE_LABELS = {
    "deletion_auc": "deletion AUC \u2193",
    "insertion_auc": "insertion AUC \u2191",
    "average_drop": "average drop % \u2193",
}


def cam_section(
    model: nn.Module,
    x: torch.Tensor,
    view: Any,
    predictions: list[dict[str, Any]],
    methods: Sequence[str],
    layer: Any,
    metrics: bool,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    metric_steps: int = 10,
    lenient: bool = False,
) -> dict[str, Any] | None:
    """CAM heatmaps of every method for each of the top classes, plus faithfulness scores.

    Each method runs once on a batch holding one copy of the input per class
    (so all classes cost one forward and one backward). Faithfulness scores
    (deletion/insertion AUC, average drop, ROAD) are computed for the top
    class, for all methods in one batched evaluation.

    With ``lenient``, a method the model cannot use (e.g. plain CAM without
    a GAP + linear head) is skipped and named in the section's hint instead
    of failing the report.

    Returns:
        ``None`` when the output is not a classification, else a dict with
        ``layer``, ``methods``, ``classes`` (each with ``maps[method] = {png,
        scores}``), ``note`` and ``hint``.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> preds = [{"index": 2, "name": "two", "p": 0.5}]
        >>> sec = cam_section(net, torch.rand(1, 3, 16, 16), None, preds, ["gradcam"], "auto", False)
        >>> sec["layer"], list(sec["classes"][0]["maps"])
        ('1', ['gradcam'])
    """
    if not predictions:
        return None
    methods = list(dict.fromkeys(get_cam(m).name for m in methods))  # aliases -> registered names
    classes = [p["index"] for p in predictions]
    total = len(methods) + (1 if metrics else 0)
    heat, layer_names, skipped = _run_methods(model, x, classes, methods, layer, lenient, progress, total)
    methods = [m for m in methods if m in heat]
    if not methods:
        return None
    scores: dict[str, dict[str, float]] = {}
    if metrics:
        scores = _faithfulness(model, x, classes[0], heat, methods, metric_steps)
        if progress is not None:
            progress("CAM methods", total, total)
    out_classes, coincide = _class_entries(predictions, heat, methods, scores)
    where = ", ".join(layer_names)
    return {
        "layer": where,
        "methods": list(methods),
        "classes": out_classes,
        "note": f"Target layer {where}; maps are min-max scaled per image (pytorch-grad-cam conventions)"
        + ("; Eigen-CAM's sign follows the activations (the reference's is arbitrary)." if "eigencam" in heat else "."),
        "hint": _hint(bool(scores), metric_steps, coincide, skipped),
        "skipped": skipped,
    }


def _run_methods(
    model: nn.Module, x: torch.Tensor, classes: list[int], methods: list[str], layer: Any, lenient: bool,
    progress: Callable[[str, int, int], None] | None, total: int,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Each method once on a batch of one input copy per class: the heatmaps, the layers explained, the skipped."""
    xb = x.expand(len(classes), *x.shape[1:])
    heat: dict[str, torch.Tensor] = {}
    layer_names: list[str] = []
    skipped: list[str] = []
    for i, method in enumerate(methods):
        # "auto" is resolved by the first method that runs; the others reuse its layers (no second probe)
        chosen = layer_names if layer_names and isinstance(layer, str) and layer == "auto" else layer
        cam = create_cam(method, model, layer=chosen, **get_cam(method).picture_options)
        try:
            if isinstance(cam, PerturbationCAM):  # a forward per channel and class: its own progress, with an ETA
                result = cam.explain(xb, target=classes, progress=None if progress is None else (
                    lambda stage, done, total: progress(stage, done, done if total is None else total)))
            else:
                result = cam.explain(xb, target=classes)
        except AttributionError as exc:
            if not lenient:
                raise
            skipped.append(f"{method} ({exc})")
            continue
        heat[method] = result.heatmap.detach().float().cpu()
        layer_names = list(result.layers)
        if isinstance(layer, str) and layer == "auto":
            layer = layer_names  # one probe: every method explains the same layer
        if progress is not None:
            progress("CAM methods", i + 1, total)
    return heat, layer_names, skipped


def _faithfulness(
    model: nn.Module, x: torch.Tensor, target: int, heat: dict[str, torch.Tensor], methods: list[str], steps: int
) -> dict[str, dict[str, float]]:
    """The top class's faithfulness scores per method, all methods in one batched evaluation."""
    # identical maps (e.g. Grad-CAM and CAM on a GAP + linear head) are scored once
    unique = [m for m in methods if _same_as(heat, methods, m, 0) is None]
    stack = torch.stack([heat[m][0] for m in unique])  # (M, H, W): each distinct top-class map
    xm = x.expand(len(unique), *x.shape[1:])
    tm = [target] * len(unique)
    values = {
        "deletion_auc": deletion_auc(model, xm, stack, tm, steps=steps),
        "insertion_auc": insertion_auc(model, xm, stack, tm, steps=steps),
        "average_drop": average_drop(model, xm, stack, tm, reduction="none"),
    }
    scores = {}
    for method in methods:
        root = method
        while root not in unique:  # follow "same as" back to a scored map
            root = _same_as(heat, methods, root, 0) or root
        j = unique.index(root)
        scores[method] = {label: float(values[key][j]) for key, label in SCORE_LABELS.items() if key in values}
    return scores


def _class_entries(
    predictions: list[dict[str, Any]], heat: dict[str, torch.Tensor], methods: list[str],
    scores: dict[str, dict[str, float]],
) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """Per class, each method's map as a PNG (noting a map equal to an earlier method's), and those pairs."""
    out_classes = []
    coincide: set[tuple[str, str]] = set()
    for k, p in enumerate(predictions):
        maps = {}
        for method in methods:
            h = heat[method][k].numpy()
            png = png_data_uri((np.clip(np.nan_to_num(h), 0.0, 1.0) * 255).round().astype(np.uint8))
            entry: dict[str, Any] = {"png": png}
            same = _same_as(heat, methods, method, k)
            if same is not None:
                entry["same"] = same
                coincide.add((same, method))
            if k == 0 and method in scores:
                entry["scores"] = scores[method]
            maps[method] = entry
        out_classes.append({"index": p["index"], "name": p["name"], "p": p["p"], "maps": maps})
    return out_classes, coincide


def _hint(scored: bool, steps: int, coincide: set[tuple[str, str]], skipped: list[str]) -> str:
    """The section's explanation: what the scores mean, why maps may coincide, what was not applicable."""
    hint = (
        "Faithfulness scores are for the top class (probability of that class): deletion removes the most "
        f"relevant pixels first ({steps} steps), insertion restores them into a blurred image, "
        "average drop is the confidence lost when only the heatmap's pixels are kept."
        if scored else "Faithfulness scores were not computed (metrics=False)."
    )
    if coincide:
        pairs = ", ".join(f"{b} = {a}" for a, b in sorted(coincide))
        hint += (
            f" Identical maps ({pairs}) are expected, not a fault: on a layer followed by global average pooling "
            "and a linear classifier, Grad-CAM's, XGrad-CAM's and CAM's channel weights are all proportional to "
            "the classifier's weights for the class, and each map is min-max scaled."
        )
    if skipped:
        hint += " Not applicable to this model: " + "; ".join(skipped) + "."
    return hint


def _same_as(heat: dict[str, torch.Tensor], methods: Sequence[str], method: str, k: int) -> str | None:
    """The first earlier method whose map of class ``k`` equals this one's (to 1e-4), if any."""
    for other in methods:
        if other == method:
            return None
        if torch.allclose(heat[other][k], heat[method][k], atol=1e-4, rtol=0):
            return other
    return None
