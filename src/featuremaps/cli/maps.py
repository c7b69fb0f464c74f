"""``featuremaps maps``: capture the feature maps of one image and draw every layer into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .command import command
from .options import DEFAULT_OUT, ModelOptions, layers_option, model_options, out_option, parse_layers, pass_model
from .outputs import count, echo_top1, output_folder, progress_bar, top_classes, write_predictions

__all__ = ["maps_cmd"]


@command("maps")
@click.argument("image", required=False)
@model_options()
@layers_option("Layers to capture: names, globs ('*conv*'), 're:REGEX'; repeat or comma-separate. "
               "Default: every leaf layer with a spatial output.")
@out_option(DEFAULT_OUT, "Output directory.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Show only the K channels with the highest --order statistic per layer.")
@click.option("--order", type=click.Choice(["mean", "max", "var"]), default="max", show_default=True,
              help="Statistic that ranks channels for --top-k.")
@click.option("--norm", type=click.Choice(["auto", "channel", "layer", "global", "robust", "symmetric"]),
              default="auto", show_default=True, help="Colour scale: per channel, per layer, shared across layers...")
@click.option("--cmap", default=None, help="Any matplotlib colormap name (default viridis; RdBu_r for signed maps).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "svg", "pdf"]), default="png",
              show_default=True, help="Picture format.")
@click.option("--labels/--no-labels", default=False,
              help="Label each channel with its index, and its value range when every tile is wide enough for it "
              "(else the index alone).")
@click.option("--tensors/--no-tensors", default=True, show_default=True,
              help="Also save the maps themselves to maps.safetensors.")
@click.option("--max-bytes", default=None, help="Cap on the memory kept, e.g. 500MB.")
@pass_model
def maps_cmd(
    model: ModelOptions, image: str | None, layer_patterns: tuple[str, ...], out_dir: str, top_k: int | None,
    order: str, norm: str, cmap: str | None, fmt: str, labels: bool, tensors: bool, max_bytes: str | None,
) -> None:
    """Capture the feature maps of IMAGE and draw every layer.

    Writes one picture per layer (a channel grid) under DIR/layers/, an
    index.html that shows them all, summary.txt (shapes and statistics per
    layer), stats.png (statistics across depth), predictions.txt (the top-5
    classes) and maps.safetensors (the maps, loadable with
    featuremaps.load_maps). On a volume (a 3-D NIfTI file or a DICOM series
    folder) the layer pictures show each 3-D layer's maximum over depth, and
    DIR/slices/LAYER.png each 3-D layer's middle axial, coronal and sagittal
    slices of its --top-k (default 8) most active channels beside the input's,
    on one colour scale per layer, with a scale bar in mm (slices.json says
    which slices and channels).
    """
    from ..capture import get_feature_maps  # lazy: PyTorch stays out of `featuremaps --help`
    from ..render import colormap_lut  # lazy: as above
    from ..visualize import plot_stats, visualize  # lazy: as above

    if cmap is not None:
        colormap_lut(cmap)  # fail early on a bad colormap name
    output_folder(out_dir, create=False)
    from ..report.volume import volume_input  # lazy: as above

    vol = model.volume(image)  # a folder or a 3-D NIfTI: the model takes the volume (1, C, D, H, W)
    net, preprocess = model.load(volume=vol is not None)
    x = volume_input(vol) if vol is not None else preprocess(model.image(image))
    maps = get_feature_maps(net, x, layers=parse_layers(layer_patterns), max_bytes=max_bytes)
    out = output_folder(out_dir)
    top = top_classes(maps.output, preprocess)
    vis = visualize(maps, channels=top_k, order=order if top_k else None, norm=norm, cmap=cmap, labels=labels)
    with progress_bar(unit="layers", min_total=8) as report:
        written: list[Path | None] = [vis.save(out, format=fmt, progress=report)]
    summary = out / "summary.txt"
    summary.write_text(str(maps.summary()) + "\n", encoding="utf-8")
    stats_png = out / "stats.png"
    plot_stats(maps, title=f"{model.spec}: statistics per layer").savefig(stats_png, dpi=90)
    written += [summary, stats_png, maps.save(out / "maps.safetensors") if tensors else None,
                write_predictions(out, top)]
    slices = _volume_slices(out, vol, maps, top_k, norm, cmap) if vol is not None else []
    echo_top1(top)
    click.echo(f"captured {len(maps)} layer{'' if len(maps) == 1 else 's'} ({maps.nbytes / 1e6:.1f} MB) "
               f"from {model.spec}")
    click.echo(f"wrote {count(len(vis), 'layer picture')} to {out / 'layers'}"
               + (" (3-D layers as their maximum over depth D)" if vol is not None else ""))
    for s in slices:
        click.echo(f"wrote {s.path} (layer {s.layer}: channels {', '.join(map(str, s.channels))} of {s.total}, "
                   "the middle axial, coronal and sagittal slices beside the input's)")
    if slices:
        click.echo(f"wrote {slices[0].path.parent / 'slices.json'}")
    for p in written:
        if p is not None:
            click.echo(f"wrote {p}")


def _volume_slices(out: Path, vol: Any, maps: Any, top_k: int | None, norm: str, cmap: str | None) -> list[Any]:
    """DIR/slices/: the middle slices of each 3-D layer's most active channels (one colour scale per layer:
    ``--norm`` when it is one scale for a whole layer, else ``auto``)."""
    from ..render import ColorScale  # lazy: as in maps_cmd
    from ..report.volume_maps import MAP_CHANNELS  # lazy: as above
    from ..report.volume_slices import write_layer_slices  # lazy: as above

    scale = ColorScale(norm=norm if norm in ("layer", "robust", "symmetric") else "auto", cmap=cmap)
    return write_layer_slices(out, vol, maps, channels=top_k or MAP_CHANNELS, color_scale=scale)
