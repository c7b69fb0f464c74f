"""The report's CAM section: heatmaps per method and class, with faithfulness scores."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._progress import Progress, ProgressArg, reporter, silent
from ..attribution import AttributionError, BaseCAM, Faithfulness, PerturbationCAM, cams, create_cam, get_cam
from .data import png_data_uri

__all__ = ["cam_section", "SCORE_LABELS"]

#: Perturbed inputs per forward of the scores: on a CPU, batches of about 4 cost the least per input (larger
#: ones leave the caches); the default model gave the same scores bit for bit in batches of 2 to 8 (a batch of
#: one differs by float rounding).
METRIC_BATCH = 4

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
    progress: ProgressArg = None,
    *,
    metric_steps: int = 10,
    lenient: bool = False,
    riders: Sequence[BaseCAM] = (),
) -> dict[str, Any] | None:
    """CAM heatmaps of every method for each of the top classes, plus faithfulness scores.

    All methods share one pass (:func:`~featuremaps.attribution.cams`) on a
    batch holding one copy of the input per class, so all methods and classes
    cost one forward and one backward; the maps equal separate
    ``create_cam(method, ...).explain(...)`` calls. Faithfulness scores
    (deletion/insertion AUC, average drop) are computed for the top class
    from one unperturbed forward (:class:`~featuremaps.attribution.Faithfulness`);
    a map identical to an earlier method's is scored once. ``riders``: more
    method instances (same model and layer) that share the pass for their own
    use, e.g. :class:`~featuremaps.report.drivers.PassRelevance`; their maps
    are not shown.

    With ``lenient``, a method the model cannot use (e.g. plain CAM without
    a GAP + linear head) is skipped and named in the section's hint instead
    of failing the report. ``progress`` (``True``, ``False`` or a callable,
    see :mod:`featuremaps._progress`) hears the ``"CAM methods"`` stage: the
    shared pass, then each method scored.

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
    with reporter(progress, unit="steps") as report:
        heat, layer_names, skipped = _run_methods(model, x, classes, methods, layer, lenient, riders, report)
        methods = [m for m in methods if m in heat]
        total = 1 + (len(methods) if metrics else 0)
        report("CAM methods", 1, total)
        if not methods:
            return None
        scores: dict[str, dict[str, float]] = {}
        if metrics:
            scores = _faithfulness(model, x, classes[0], heat, methods, metric_steps,
                                   lambda done: report("CAM methods", 1 + done, total))
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
    riders: Sequence[BaseCAM] = (), report: Progress = silent,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Every method on a batch of one input copy per class: the heatmaps, the layers explained, the methods
    skipped (with why). Gradient and activation methods share one pass (:func:`~featuremaps.attribution.cams`);
    perturbation methods (a forward per channel and class) run after it on the same layers, each reporting its
    forwards to ``report`` (the ``"<method> forwards"`` stage, with its total known before the first)."""
    xb = x.expand(len(classes), *x.shape[1:])
    shared = [m for m in methods if get_cam(m).kind != "perturbation"]
    built = [create_cam(m, model, layer=layer, **get_cam(m).picture_options) for m in shared]
    results = cams(model, xb, [*built, *riders], target=classes, lenient=lenient) if built or riders else {}
    heat = {name: r.heatmap.detach().float().cpu() for name, r in results.items() if name in methods}
    layer_names = list(next(iter(results.values())).layers) if results else []
    skipped = [f"{name} ({exc})" for name, exc in getattr(results, "skipped", {}).items() if name in methods]
    for method in (m for m in methods if m not in shared):
        chosen = layer_names if layer_names and isinstance(layer, str) and layer == "auto" else layer
        cam = create_cam(method, model, layer=chosen, **get_cam(method).picture_options)
        try:
            if isinstance(cam, PerturbationCAM):  # its forwards reported, their count known before the first
                result = cam.explain(xb, target=classes, progress=report)
            else:
                result = cam.explain(xb, target=classes)
        except AttributionError as exc:
            if not lenient:
                raise
            skipped.append(f"{method} ({exc})")
            continue
        heat[method] = result.heatmap.detach().float().cpu()
        layer_names = layer_names or list(result.layers)
    return heat, layer_names, skipped


def _faithfulness(
    model: nn.Module, x: torch.Tensor, target: int, heat: dict[str, torch.Tensor], methods: list[str], steps: int,
    tick: Callable[[int], None],
) -> dict[str, dict[str, float]]:
    """The top class's faithfulness scores per method, from one unperturbed forward (:class:`Faithfulness`).

    The perturbed inputs of all methods run together
    (:meth:`~featuremaps.attribution.Faithfulness.evaluate_many`) in batches
    of :data:`METRIC_BATCH`; a map identical to an earlier method's (to 1e-4)
    takes that method's scores.
    """
    check = Faithfulness(model, x[:1], target, batch_size=METRIC_BATCH)
    alias = {method: _same_as(heat, methods, method, 0) for method in methods}
    own = [m for m in methods if alias[m] is None]  # e.g. CAM = Grad-CAM on a GAP + linear head: scored once
    ticks = [done for done, m in enumerate(methods, 1) if alias[m] is None]  # methods scored when each own one is

    said = [0]

    def told(scored: int) -> None:  # each method in turn, as when they were scored one by one
        upto = ticks[scored] - 1 if scored < len(ticks) else len(methods)
        for done in range(said[0] + 1, upto + 1):
            tick(done)
        said[0] = max(said[0], upto)

    values = check.evaluate_many({m: heat[m][:1] for m in own}, steps=steps, metrics=tuple(SCORE_LABELS),
                                 progress=told)
    scores: dict[str, dict[str, float]] = {}
    for method in methods:
        got = values[alias[method] or method]
        scores[method] = {label: float(got[key][0]) for key, label in SCORE_LABELS.items()}
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
