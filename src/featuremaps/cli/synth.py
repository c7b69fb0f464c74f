"""``featuremaps synthesize``: images optimized to make chosen channels fire.

A thin shell over :func:`featuremaps.synthesis.synthesize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .command import command
from .options import DEFAULT_OUT, ModelOptions, model_options, out_option, pass_model
from .outputs import mark_new_file

__all__ = ["synth_cmd"]


def _numbered(out: Path, i: int, n: int) -> Path:
    width = max(2, len(str(n - 1)))
    return out.with_name(f"{out.stem}-{i:0{width}d}{out.suffix or '.png'}")


@command("synthesize")
@model_options(image=False, input_size=False)
@click.option("--target", "targets", multiple=True, required=True, metavar="LAYER:CHANNEL",
              help="What to maximize: LAYER:CHANNEL, LAYER:A-B (channels A to B), LAYER:* (every channel) "
              "or class:INDEX. Repeat for several images.")
@click.option("--steps", type=click.IntRange(min=1), default=256, show_default=True, help="Optimization steps.")
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same images).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Adam learning rate.")
@click.option("--param", type=click.Choice(["fft", "pixel"]), default="fft", show_default=True,
              help="Image parameterization.")
@click.option("--decorrelate/--no-decorrelate", default=True, show_default=True,
              help="Optimize in the decorrelated ImageNet colour space.")
@click.option("--transforms", type=click.Choice(["standard", "none"]), default="standard", show_default=True,
              help="Random jitter, scale and rotation at every step (robustness).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images optimized together (default: all at once on a GPU, 8 at a time on a CPU, "
              "where that is faster).")
@click.option("--separate", is_flag=True, help="Write one numbered file per image instead of one grid.")
@click.option("--labels/--no-labels", default=False, show_default=True, help="Caption each grid tile with its target.")
@out_option(f"{DEFAULT_OUT}/synthesis.png", "Output picture (.png, .jpg or .webp).", folder=False)
@pass_model
def synth_cmd(
    model: ModelOptions, targets: tuple[str, ...], steps: int, size: int, seed: int, lr: float, param: str,
    decorrelate: bool, transforms: str, batch_size: int | None, separate: bool, labels: bool, out_path: str,
) -> None:
    """Synthesize images that make chosen channels of the model fire.

    Starting from faint noise, each image is optimized to maximize its
    target's mean activation (feature visualization, as in Olah et al.,
    "Feature Visualization", Distill 2017). Several targets give one grid
    picture (or numbered files with --separate). Ctrl-C stops early and
    still writes the current images.

    Example: featuremaps synthesize --target _blocks.5._project_conv:17 -o ch17.png
    """
    from ..io import save_image  # lazy: PyTorch stays out of `featuremaps --help`
    from ..synthesis import synthesize  # lazy: as above

    net, preprocess = model.load()
    result = synthesize(
        net, list(targets), steps=steps, size=size, param=param, decorrelate=decorrelate,
        transforms=transforms, lr=lr, seed=seed, batch=batch_size if batch_size is not None else True,
        preprocess=preprocess, progress=True, return_result=True,
    )
    out = Path(out_path)
    mark = mark_new_file(out_path)
    written: list[Path] = []
    if separate or len(result) == 1:
        for i, img in enumerate(result.images):
            dest = out if len(result) == 1 else _numbered(out, i, len(result))
            written.append(save_image(img, dest))
    else:
        written.append(save_image(result.grid(labels=labels), out))
    mark()
    _report(result, written, steps)


def _report(result: Any, written: list[Path], steps: int) -> None:
    for i, (name, value) in enumerate(zip(result.targets, result.activations.tolist())):
        click.echo(f"{i:>3}  {name}  activation {value:.4g}")
    if result.interrupted:
        done = int(result.steps_done.min()) if len(result) else 0
        click.echo(f"interrupted: wrote the current images (at least {done} of {steps} steps)", err=True)
    click.echo(f"{len(result)} image{'s' if len(result) != 1 else ''} in {result.seconds:.1f} s")
    for p in written:
        click.echo(f"wrote {p}")
