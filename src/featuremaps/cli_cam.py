"""``featuremaps cam``: class activation maps of an image, as overlays and raw maps.

The command is a thin shell over :mod:`featuremaps.attribution`; the method
choices come from its registry (:func:`~featuremaps.attribution.cam_methods`).
Register it on the main group with ``cli.add_command(cam_cmd)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .attribution import cam_methods
from .cli import DEFAULT_OUT, _image, _load, _output_folder, _top_classes, cli_wording, model_options

__all__ = ["cam_cmd", "parse_target"]


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


@click.command("cam")
@click.argument("image", required=False)
@model_options
@click.option(
    "--method", "methods", multiple=True, type=click.Choice([*cam_methods(), "all"], case_sensitive=False),
    help="CAM method (repeat for several; 'all' for every one). Default: gradcam.",
)
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
@click.option("-o", "--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Output directory.")
def cam_cmd(
    image: str | None, model_spec: str, weights: str | None, device: str | None, trust_pickle: bool,
    methods: tuple[str, ...], target: str | None, layers: tuple[str, ...], metrics: bool, metric_steps: int,
    batch_size: int, alpha: float, out_dir: str,
) -> None:
    """Explain the model's prediction on IMAGE with class activation maps.

    Writes cam_METHOD.png (the map over the image the model sees),
    cams.safetensors (each method's heatmap and its raw per-layer maps) and
    predictions.txt; with --metrics also metrics.json. Default IMAGE: the
    shipped cat photo.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from ._atomic import atomic_path
    from .attribution import AttributionError, create_cam, faithfulness, get_cam
    from .render import overlay, save_image

    chosen = list(dict.fromkeys(m.lower() for m in methods)) or ["gradcam"]
    if "all" in chosen:
        chosen = cam_methods()
    _output_folder(out_dir, create=False)
    model, preprocess = _load(model_spec, weights, device, trust_pickle)
    img = _image(image)
    view = preprocess.view(img)
    x = preprocess(img)
    card = getattr(preprocess, "card", None)
    cls = parse_target(target, card)
    with torch.no_grad():
        from .attribution.base import hookless

        with hookless(model):
            output = model(x)
    top = _top_classes(output, preprocess)
    for i, name, prob in top:
        click.echo(f"{prob:.4f}  {i:>5}  {name}")
    if cls is None:
        if not top:
            raise click.UsageError("the model output is not a vector of class scores; pass --target")
        cls = top[0][0]
    named = card is not None and bool(getattr(card, "class_names", None))
    class_name = card.class_name(cls) if card is not None else f"class {cls}"
    click.echo(f"explaining class {cls}" + (f" ({class_name})" if named else ""))

    # Every method first, in memory: the cheap ones before those with a forward per channel, and a method
    # this model or layer cannot use is skipped with a note (or, asked for alone, is the error), so nothing
    # is written until something can be.
    order = sorted(chosen, key=lambda m: m in ("scorecam", "ablationcam"))
    results: dict[str, Any] = {}
    skipped: list[str] = []
    layer_sel: Any = list(layers) if layers else "auto"
    for name in order:
        options: dict[str, Any] = {"layer": layer_sel, **get_cam(name).picture_options}
        if name in ("scorecam", "ablationcam"):
            options["batch_size"] = batch_size
        try:
            results[name] = create_cam(name, model, **options).explain(x, cls)
        except AttributionError as exc:
            if len(chosen) == 1:
                raise
            skipped.append(name)
            click.echo(f"{name}: skipped, {cli_wording(str(exc).splitlines()[0])}", err=True)
            continue
        click.echo(f"{name}: layer {', '.join(results[name].layers)}")
    if not results:
        raise click.ClickException(f"none of the methods {', '.join(chosen)} applies to this model and layer")

    out = _output_folder(out_dir)
    written: list[Path] = []
    tensors: dict[str, torch.Tensor] = {}
    meta_layers: dict[str, list[str]] = {}
    scores: dict[str, dict[str, float]] = {}
    for name in [m for m in chosen if m in results]:
        result = results[name]
        heat = result.heatmap
        meta_layers[name] = list(result.layers)
        tensors[name] = heat.detach().float().cpu().contiguous()
        for lname, lmap in result.layer_maps.items():
            tensors[f"{name}/{lname}"] = lmap.detach().float().cpu().contiguous()
        picture = overlay(view, heat[0].detach().float().cpu(), alpha=alpha)
        written.append(save_image(np.asarray(picture), out / f"cam_{_slug(name)}.png"))
        if metrics:
            values = faithfulness(model, x, heat, cls, batch_size=batch_size, steps=metric_steps)
            scores[name] = {k: round(float(v[0]), 6) for k, v in values.items()}

    meta = {
        "format": "featuremaps-cam/1",
        "model": model_spec,
        "image": str(image) if image is not None else "sample:cat",
        "target": str(cls),
        "class_name": class_name,
        "layers": json.dumps(meta_layers),
        "skipped": json.dumps(skipped),
    }
    path = out / "cams.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    written.append(path)
    if top:
        pred = out / "predictions.txt"
        with atomic_path(pred) as tmp:
            tmp.write_text("".join(f"{q:.4f}\t{i}\t{n}\n" for i, n, q in top), encoding="utf-8")
        written.append(pred)
    if metrics:
        click.echo(f"faithfulness for class {cls}, {metric_steps} deletion/insertion steps (the report uses 10 "
                   "for speed, so its AUCs differ slightly)")
        _print_metrics(scores)
        mpath = out / "metrics.json"
        with atomic_path(mpath) as tmp:
            tmp.write_text(json.dumps({"target": cls, "class_name": class_name, "scores": scores}, indent=2) + "\n",
                           encoding="utf-8")
        written.append(mpath)
    for p in written:
        click.echo(f"wrote {p}")


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
