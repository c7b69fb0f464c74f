"""``featuremaps report``: one self-contained interactive HTML page about a model and an image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .command import command
from .options import DEFAULT_OUT, ModelOptions, layers_option, model_options, out_option, parse_layers, pass_model
from .outputs import count, echo_top1, mark_new_file, progress_bar

__all__ = ["report_cmd"]


@command("report")
@click.argument("image", required=False)
@model_options()
@layers_option("Layers to show: names, globs, 're:REGEX'. Default: every leaf layer with a spatial output.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Show only the K most active channels per layer (default: all).")
@click.option("--max-tile", type=click.IntRange(min=4, max=224), default=32, show_default=True,
              help="Channel thumbnails are pooled to at most this many pixels per side.")
@click.option("--photo-size", type=click.IntRange(min=32, max=4096), default=448, show_default=True,
              help="Longest side of the embedded photo in pixels.")
@click.option("--cam-method", "cam_methods", multiple=True,
              help="CAM methods to show (repeat; default: the gradient-based ones). See `featuremaps cam --help`.")
@click.option("--top-k-classes", "n_classes", type=click.IntRange(min=1), default=5, show_default=True,
              help="Top classes listed and explained (each CAM method runs once per class; fewer is faster, "
              "notably for Score-CAM and Ablation-CAM).")
@click.option("--cam-layer", default="auto", show_default=True, help="The CAM target layer.")
@click.option("--no-cams", is_flag=True, help="Leave out the CAM section.")
@click.option("--no-metrics", is_flag=True, help="Skip the faithfulness scores (faster).")
@click.option("--synthesize", "synth_layers", multiple=True,
              help="Also synthesize an image exciting each shown channel of these layers (slow; off by default).")
@click.option("--synth-steps", type=click.IntRange(min=1), default=128, show_default=True,
              help="Optimization steps per synthesized image.")
@click.option("--atlas", "atlas_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="An atlas folder of the same model: channels link to their top dataset examples there.")
@click.option("--concepts", "concepts_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="A concepts folder of the same model (`featuremaps concepts -o DIR`): 'What drove this "
                   "prediction' also shows each concept's importance, where it is in the photo and its page.")
@click.option("--title", default=None, help="Page title.")
@out_option(f"{DEFAULT_OUT}/report.html", "Where to write the page.", folder=False)
@click.option("--serve", is_flag=True, help="Serve the page on http://127.0.0.1 until Ctrl-C.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port for --serve (default: a free one).")
@pass_model
def report_cmd(
    model: ModelOptions, image: str | None, layer_patterns: tuple[str, ...], top_k: int | None, max_tile: int,
    photo_size: int, cam_methods: tuple[str, ...], n_classes: int, cam_layer: str, no_cams: bool, no_metrics: bool,
    synth_layers: tuple[str, ...], synth_steps: int, atlas_dir: str | None, concepts_dir: str | None,
    title: str | None, out_path: str,
    serve: bool, port: int,
) -> None:
    """Turn a model and IMAGE into one self-contained interactive HTML page.

    Without arguments: the embedded pretrained EfficientNet-Lite0 on the
    shipped cat photo. The page works offline and makes no network requests.
    """
    from ..report import report  # lazy: PyTorch stays out of `featuremaps --help`
    from ..report.build import DEFAULT_CAM_METHODS  # lazy: as above

    vol = model.volume(image)  # a folder or a 3-D NIfTI: the volume report (slice viewer, 3-D CAMs)
    loaded = model.load(volume=vol is not None)
    net, preprocess = loaded
    src: Any = image if image is None or model.window is None else _named(model.image(image), image)
    if vol is not None:  # the volume as it is; the model with its card (class names: --classes)
        net, src, preprocess = loaded, vol, None
    with progress_bar() as bar:
        progress = _announcing(bar)
        rep = report(
            net, src, preprocess=preprocess, layers=parse_layers(layer_patterns), top_k=top_k,
            max_tile=max_tile, cam_methods=() if no_cams else (cam_methods or DEFAULT_CAM_METHODS),
            cam_layer=cam_layer, classes=n_classes, metrics=not no_metrics, title=title, progress=progress,
            synthesize=parse_layers(synth_layers), synth_steps=synth_steps, atlas=atlas_dir, photo_size=photo_size,
            atlas_href=_relative_href(atlas_dir, out_path) if atlas_dir else None, concepts=concepts_dir,
            concepts_href=_relative_href(concepts_dir, out_path) if concepts_dir else None,
        )
    mark = mark_new_file(out_path)
    path = rep.save(out_path)
    mark()
    echo_top1([(t["index"], t["name"], t["p"]) for t in rep.data["predictions"]])
    meta = rep.data["meta"]
    click.echo(
        f"{count(meta['layers_total'], 'layer')}, {count(meta['channels'], 'channel')}, {rep.nbytes / 1e6:.1f} MB, "
        f"{rep.seconds:.1f} s" + (f" (image {image})" if image else "")
    )
    click.echo(f"wrote {path.resolve()}")
    if serve:
        _serve(path, port, atlas_dir, concepts_dir)


def _announcing(bar: Any) -> Any:
    """``bar``, printing one line when a perturbation method's forwards start (their count, before they run)."""

    def update(stage: str, done: int, total: int | None) -> None:
        if stage.endswith(" forwards") and done == 0 and total:
            click.echo(f"{stage.removesuffix(' forwards')}: {total:,} forwards to run (one per channel and class; "
                       "--top-k-classes or --cam-method lower it)", err=True)
        bar(stage, done, total)

    return update


def _named(img: Any, path: str) -> Any:
    """``img`` carrying the file name it came from (for titles), as PIL does for opened files."""
    img.filename = path
    return img


def _relative_href(target: str, page: str) -> str:
    """A link from the page's folder to ``target`` (POSIX separators)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def _serve(path: Path, port: int, atlas_dir: str | None = None, concepts_dir: str | None = None) -> None:
    """Serve the page (and the atlas and concept pages it links) on 127.0.0.1 only, nothing else, until Ctrl-C."""
    from ..report.serve import serve_report  # lazy: as in report_cmd

    with serve_report(path, atlas=atlas_dir, concepts=concepts_dir, port=port) as server:
        others = len(server.files) - 1
        what = "this page" + (f" and the {others} atlas and concept files it links" if others else "")
        click.echo(f"serving {server.url()} (Ctrl-C to stop)")
        click.echo(f"on 127.0.0.1 only: {what}; nothing else of the folder, requests for other hosts refused")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")
