"""``featuremaps cam``: class activation maps of an image, as overlays and raw maps.

A thin shell over :mod:`featuremaps.attribution`: the method choices come from its registry
(:func:`~featuremaps.attribution.cam_methods`), and the order they run in from each method's ``kind`` (those
that need a forward per channel, ``"perturbation"``, last). The steps, each its own function:

1. the prediction and the class to explain (:func:`_predict`);
2. every chosen method in memory, skipping with a note those the model or layer cannot use
   (:func:`_explain_all`), so nothing is written until something can be;
3. with ``--metrics``, each method's faithfulness scores, sharing one unperturbed forward (:func:`_scores`);
4. the folder, written by the library (:func:`featuremaps.attribution.save_cams`, format ``featuremaps-cam/1``,
   read back by :func:`featuremaps.load_cams`): overlays, the raw maps, predictions and scores.
"""

from __future__ import annotations

from typing import Any

import click

from .command import cli_wording, command
from .options import DEFAULT_OUT, ModelOptions, model_options, out_option, pass_model
from .outputs import Prediction, echo_predictions, output_folder, progress_bar, top_classes

__all__ = ["cam_cmd", "parse_target", "BUILTIN_METHODS"]

#: The names of the registry's built-in methods, in its order (``attribution.methods.BUILTIN``; a test checks
#: they agree), for ``--help`` without importing PyTorch. Values are still checked against the registry.
BUILTIN_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "eigencam",
                   "ablationcam", "cam")


class _MethodChoice(click.Choice):
    """The registry's CAM methods and ``all``, read from the registry only when a value is checked (it imports
    PyTorch); ``--help`` lists the built-in ones from :data:`BUILTIN_METHODS`."""

    def __init__(self) -> None:
        super().__init__([], case_sensitive=False)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return f"[{'|'.join((*BUILTIN_METHODS, 'all'))}]"

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
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Refuse (skip, with several methods) a Score-CAM or Ablation-CAM run estimated to take longer "
              "(the estimate is printed before each such method starts).")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0), help="Overlay opacity.")
@out_option(DEFAULT_OUT, "Output directory.")
@pass_model
def cam_cmd(
    model: ModelOptions, image: str | None, methods: tuple[str, ...], target: str | None, layers: tuple[str, ...],
    metrics: bool, metric_steps: int, batch_size: int, budget: float | None, alpha: float, out_dir: str,
) -> None:
    """Explain the model's prediction on IMAGE with class activation maps.

    Writes cam_METHOD.png (the map over the image the model sees),
    cams.safetensors (each method's heatmap and its raw per-layer maps) and
    predictions.txt; with --metrics also metrics.json. Default IMAGE: the
    shipped cat photo.
    """
    from ..attribution import cam_methods, save_cams  # lazy: PyTorch stays out of `featuremaps --help`

    chosen = list(dict.fromkeys(m.lower() for m in methods)) or ["gradcam"]
    if "all" in chosen:
        chosen = cam_methods()
    output_folder(out_dir, create=False)
    from ..report.volume import slice_overlays, volume_input  # lazy: as above

    vol = model.volume(image)  # a folder or a 3-D NIfTI: 3-D CAMs, drawn over its middle slices
    net, preprocess = model.load(volume=vol is not None)
    img = model.image(image) if vol is None else None
    x = preprocess(img) if vol is None else volume_input(vol)
    card = getattr(preprocess, "card", None)
    top, cls = _predict(net, x, preprocess, parse_target(target, card))
    named = card is not None and bool(getattr(card, "class_names", None))
    class_name = card.class_name(cls) if card is not None else f"class {cls}"
    click.echo(f"explaining class {cls}" + (f" ({class_name})" if named else ""))
    results, skipped = _explain_all(net, x, cls, chosen, list(layers) if layers else "auto", batch_size, budget)

    scores = _scores(net, x, cls, results, metric_steps, batch_size) if metrics else None
    out = output_folder(out_dir)
    written = save_cams(
        out, results, model=model.spec, image=str(image) if image is not None else "sample:cat", target=cls,
        class_name=class_name, skipped=skipped, view=preprocess.view(img) if vol is None else None, alpha=alpha,
        predictions=top, metrics=scores,
    )
    if vol is not None:
        written[:0] = slice_overlays(out, vol, {m: r.heatmap[0] for m, r in results.items()}, alpha)
    if scores is not None:
        click.echo(f"faithfulness for class {cls}, {metric_steps} deletion/insertion steps (the report uses 10 "
                   "for speed, so its AUCs differ slightly)")
        _print_metrics(scores)
    for p in written:
        if p is not None:
            click.echo(f"wrote {p}")


def _predict(net: Any, x: Any, preprocess: Any, cls: int | None) -> tuple[list[Prediction], int]:
    """One plain forward: the top classes (printed) and the class to explain (``cls``, else the top one)."""
    import torch

    from ..attribution.runtime import hookless  # lazy: as in cam_cmd
    from ..models import class_scores  # lazy: as in cam_cmd

    with torch.no_grad(), hookless(net):
        output = net(x)
    top = top_classes(output, preprocess)
    echo_predictions(top)
    if class_scores(output) is None:
        kind = f"a {output.ndim}-D tensor" if isinstance(output, torch.Tensor) else f"a {type(output).__name__}"
        raise click.UsageError(
            f"the model's output is {kind}, not (batch, classes) scores (a detector's or a segmenter's?): "
            "`featuremaps cam` explains classifiers; for detections or masks use the Python API with "
            "fm.DetectionTarget or fm.SegmentationTarget"
        )
    if cls is None:
        if not top:
            raise click.UsageError("the model output is not a vector of class scores; pass --target")
        cls = top[0][0]
    return top, cls


def _explain_all(
    net: Any, x: Any, cls: int, chosen: list[str], layer: Any, batch_size: int, budget: float | None = None,
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
            cam = create_cam(name, net, **options)
            if method.kind == "perturbation":
                results[name] = _explain_costly(cam, name, x, cls, budget)
            else:
                results[name] = cam.explain(x, cls)
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


def _explain_costly(cam: Any, name: str, x: Any, cls: int, budget: float | None) -> Any:
    """A perturbation method: its estimated cost on one line first, refused over ``--budget``, then a bar."""
    from ..attribution.cost import BudgetError, format_seconds  # lazy: as in cam_cmd

    cost = cam.estimate(x, cls)
    click.echo(f"{name}: {cost.describe()}")
    if budget is not None and cost.seconds > budget:
        raise BudgetError(
            f"{name} would take about {format_seconds(cost.seconds)} ({cost.forwards:,} forwards), over --budget "
            f"{budget:g}; choose a --layer with fewer channels, a gradient --method, or a larger --budget"
        )
    with progress_bar(unit="forwards", min_total=2) as bar:
        return cam.explain(x, cls, progress=bar)


def _scores(
    net: Any, x: Any, cls: int, results: dict[str, Any], steps: int, batch_size: int,
) -> dict[str, dict[str, float]]:
    """Each method's faithfulness scores for the first sample, from one shared unperturbed forward."""
    from ..attribution import Faithfulness  # lazy: as in cam_cmd

    check = Faithfulness(net, x, cls, batch_size=batch_size)
    return {name: {k: round(float(v[0]), 6) for k, v in check.evaluate(result.heatmap, steps=steps).items()}
            for name, result in results.items()}


_METRIC_COLUMNS = (
    ("deletion_auc", "deletion AUC (low)"),
    ("insertion_auc", "insertion AUC (high)"),
    ("average_drop", "avg drop % (low)"),
    ("increase", "increase %"),
    ("road_combined", "ROAD (high)"),
)


def _print_metrics(scores: dict[str, dict[str, float]]) -> None:
    """The scores as a table; a score no method has (ROAD, 2-D only, on a volume) has no column."""
    columns = [(k, label) for k, label in _METRIC_COLUMNS if any(k in s for s in scores.values())]
    head = ["method"] + [label for _, label in columns]
    rows = [[m] + [f"{s[k]:.4f}" if k in s else "n/a" for k, _ in columns] for m, s in scores.items()]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
