"""``featuremaps cam``: class activation maps of an image, as overlays and raw maps.

A thin shell over :mod:`featuremaps.attribution`: the method choices come from its registry
(:func:`~featuremaps.attribution.cam_methods`), and the order they run in from each method's ``kind`` (those
that need a forward per channel, ``"perturbation"``, last). The steps, each its own function:

1. the prediction and the class to explain (:func:`_predict`);
2. every chosen method in memory, skipping with a note those the model or layer cannot use
   (:func:`_explain_all`), so nothing is written until something can be;
3. the overlays and, with ``--metrics``, the faithfulness scores (:func:`_write_overlays`);
4. the raw maps in one file (:func:`save_cam_file`, format ``featuremaps-cam/1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .._atomic import atomic_path
from .command import cli_wording, command
from .options import DEFAULT_OUT, ModelOptions, model_options, out_option, pass_model
from .outputs import Prediction, echo_predictions, output_folder, top_classes, write_predictions

__all__ = ["cam_cmd", "parse_target", "save_cam_file"]


class _MethodChoice(click.Choice):
    """The registry's CAM methods and ``all``, read from the registry only when needed (it imports PyTorch)."""

    def __init__(self) -> None:
        super().__init__([], case_sensitive=False)

    @property
    def choices(self) -> tuple[str, ...]:
        from ..attribution import cam_methods  # lazy: PyTorch only when the choices are shown or checked

        return (*cam_methods(), "all")

    @choices.setter
    def choices(self, value: Any) -> None:
        pass  # click.Choice.__init__ sets them; ours come from the registry


def parse_target(value: str | None, card: Any) -> int | None:
    """A ``--target`` value: a class index, or a class name of the model card.

    Names match case-insensitively, exactly or as the unique class containing
    them.

    Example:
        >>> from featuremaps.models import imagenet_card
        >>> card = imagenet_card("m", "m", 1000)
        >>> parse_target("281", card), parse_target("Tabby", card), parse_target(None, card)
        (281, 281, None)
    """
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = list(getattr(card, "class_names", None) or [])
    if not names:
        raise click.BadParameter(f"{value!r} is not a class index and the model has no class names", param_hint="--target")
    low = text.lower()
    exact = [i for i, n in enumerate(names) if n.lower() == low]
    if len(exact) == 1:
        return exact[0]
    partial = [i for i, n in enumerate(names) if low in n.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        shown = ", ".join(f"{names[i]} ({i})" for i in partial[:6])
        raise click.BadParameter(f"{value!r} matches several classes: {shown}; be more specific", param_hint="--target")
    raise click.BadParameter(f"{value!r} is not a class index or a class name of the model", param_hint="--target")



def _slug(name: str) -> str:
    return name.replace("+", "p")


@command("cam")
@click.argument("image", required=False)
@model_options()
@click.option("--method", "methods", multiple=True, type=_MethodChoice(),
              help="CAM method (repeat for several; 'all' for every one). Default: gradcam.")
@click.option("--target", default=None, help="Class to explain: an index or a class name. Default: the top class.")
@click.option("--layer", "layers", multiple=True,
              help="Target layer name (repeat to fuse several). Default: auto (the last spatial layer).")
@click.option("--metrics", is_flag=True, help="Also compute faithfulness metrics (deletion/insertion AUC, "
              "average drop/increase, ROAD).")
@click.option("--metric-steps", default=32, show_default=True, type=click.IntRange(min=2),
              help="Deletion/insertion steps of --metrics.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Masked forwards per batch (Score-CAM, Ablation-CAM, metrics).")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0), help="Overlay opacity.")
@out_option(DEFAULT_OUT, "Output directory.")
@pass_model
def cam_cmd(
    model: ModelOptions, image: str | None, methods: tuple[str, ...], target: str | None, layers: tuple[str, ...],
    metrics: bool, metric_steps: int, batch_size: int, alpha: float, out_dir: str,
) -> None:
    """Explain the model's prediction on IMAGE with class activation maps.

    Writes cam_METHOD.png (the map over the image the model sees),
    cams.safetensors (each method's heatmap and its raw per-layer maps) and
    predictions.txt; with --metrics also metrics.json. Default IMAGE: the
    shipped cat photo.
    """
    from ..attribution import cam_methods  # lazy: PyTorch stays out of `featuremaps --help`

    chosen = list(dict.fromkeys(m.lower() for m in methods)) or ["gradcam"]
    if "all" in chosen:
        chosen = cam_methods()
    output_folder(out_dir, create=False)
    net, preprocess = model.load()
    img = model.image(image)
    x = preprocess(img)
    card = getattr(preprocess, "card", None)
    top, cls = _predict(net, x, preprocess, parse_target(target, card))
    named = card is not None and bool(getattr(card, "class_names", None))
    class_name = card.class_name(cls) if card is not None else f"class {cls}"
    click.echo(f"explaining class {cls}" + (f" ({class_name})" if named else ""))
    results, skipped = _explain_all(net, x, cls, chosen, list(layers) if layers else "auto", batch_size)

    out = output_folder(out_dir)
    written, scores = _write_overlays(out, net, x, preprocess.view(img), cls, results, alpha,
                                      metric_steps if metrics else None, batch_size)
    meta = {"model": model.spec, "image": str(image) if image is not None else "sample:cat", "target": str(cls),
            "class_name": class_name, "skipped": skipped}
    written.append(save_cam_file(out / "cams.safetensors", results, meta))
    written.append(write_predictions(out, top))
    if metrics:
        click.echo(f"faithfulness for class {cls}, {metric_steps} deletion/insertion steps (the report uses 10 "
                   "for speed, so its AUCs differ slightly)")
        _print_metrics(scores)
        written.append(_write_json(out / "metrics.json", {"target": cls, "class_name": class_name, "scores": scores}))
    for p in written:
        if p is not None:
            click.echo(f"wrote {p}")


def _predict(net: Any, x: Any, preprocess: Any, cls: int | None) -> tuple[list[Prediction], int]:
    """One plain forward: the top classes (printed) and the class to explain (``cls``, else the top one)."""
    import torch

    from ..attribution.runtime import hookless  # lazy: as in cam_cmd

    with torch.no_grad(), hookless(net):
        output = net(x)
    top = top_classes(output, preprocess)
    echo_predictions(top)
    if cls is None:
        if not top:
            raise click.UsageError("the model output is not a vector of class scores; pass --target")
        cls = top[0][0]
    return top, cls


def _explain_all(
    net: Any, x: Any, cls: int, chosen: list[str], layer: Any, batch_size: int,
) -> tuple[dict[str, Any], list[str]]:
    """Every chosen method's result, in memory, in the order chosen; and the methods skipped.

    The cheap methods run before those with a forward per channel (kind ``"perturbation"``); a method this
    model or layer cannot use is skipped with a note (asked for alone, it is the error).
    """
    from ..attribution import AttributionError, create_cam, get_cam  # lazy: as in cam_cmd

    results: dict[str, Any] = {}
    skipped: list[str] = []
    for name in sorted(chosen, key=lambda m: get_cam(m).kind == "perturbation"):
        method = get_cam(name)
        options: dict[str, Any] = {"layer": layer, **method.picture_options}
        if method.kind == "perturbation":
            options["batch_size"] = batch_size
        try:
            results[name] = create_cam(name, net, **options).explain(x, cls)
        except AttributionError as exc:
            if len(chosen) == 1:
                raise
            skipped.append(name)
            click.echo(f"{name}: skipped, {cli_wording(str(exc).splitlines()[0])}", err=True)
            continue
        click.echo(f"{name}: layer {', '.join(results[name].layers)}")
    if not results:
        raise click.ClickException(f"none of the methods {', '.join(chosen)} applies to this model and layer")
    return {name: results[name] for name in chosen if name in results}, skipped


def _write_overlays(
    out: Path, net: Any, x: Any, view: Any, cls: int, results: dict[str, Any], alpha: float,
    metric_steps: int | None, batch_size: int,
) -> tuple[list[Path | None], dict[str, dict[str, float]]]:
    """``cam_METHOD.png`` per method; with ``metric_steps``, each method's faithfulness scores too."""
    import numpy as np

    from ..attribution import faithfulness  # lazy: as in cam_cmd
    from ..render import overlay, save_image  # lazy: as in cam_cmd

    written: list[Path | None] = []
    scores: dict[str, dict[str, float]] = {}
    for name, result in results.items():
        heat = result.heatmap
        picture = overlay(view, heat[0].detach().float().cpu(), alpha=alpha)
        written.append(save_image(np.asarray(picture), out / f"cam_{_slug(name)}.png"))
        if metric_steps is not None:
            values = faithfulness(net, x, heat, cls, batch_size=batch_size, steps=metric_steps)
            scores[name] = {k: round(float(v[0]), 6) for k, v in values.items()}
    return written, scores


def save_cam_file(path: Path, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write the ``featuremaps-cam/1`` file: each method's heatmap and raw per-layer maps, atomically.

    Tensors: ``METHOD`` (the heatmap) and ``METHOD/LAYER`` (that layer's map), float32. Metadata (strings):
    ``format``, ``model``, ``image``, ``target``, ``class_name``, ``layers`` (JSON: method -> layer names)
    and ``skipped`` (JSON: the methods that did not apply); ``meta`` gives all but ``format`` and ``layers``.
    """
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for name, result in results.items():
        tensors[name] = result.heatmap.detach().float().cpu().contiguous()
        for lname, lmap in result.layer_maps.items():
            tensors[f"{name}/{lname}"] = lmap.detach().float().cpu().contiguous()
    metadata = {
        "format": "featuremaps-cam/1", "model": str(meta["model"]), "image": str(meta["image"]),
        "target": str(meta["target"]), "class_name": str(meta["class_name"]),
        "layers": json.dumps({name: list(result.layers) for name, result in results.items()}),
        "skipped": json.dumps(list(meta["skipped"])),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _write_json(path: Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


_METRIC_COLUMNS = (
    ("deletion_auc", "deletion AUC (low)"),
    ("insertion_auc", "insertion AUC (high)"),
    ("average_drop", "avg drop % (low)"),
    ("increase", "increase %"),
    ("road_combined", "ROAD (high)"),
)


def _print_metrics(scores: dict[str, dict[str, float]]) -> None:
    head = ["method"] + [label for _, label in _METRIC_COLUMNS]
    rows = [[m] + [f"{s.get(k, float('nan')):.4f}" for k, _ in _METRIC_COLUMNS] for m, s in scores.items()]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
