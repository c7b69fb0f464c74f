"""``featuremaps layers``: the table of a model's layers (names to select them by, types, output shapes)."""

from __future__ import annotations

import click

from .command import command
from .options import ModelOptions, layers_option, model_options, parse_layers, pass_model

__all__ = ["layers_cmd"]


@command("layers")
@click.argument("image", required=False)
@model_options()
@layers_option("Only layers matching these names/globs.")
@click.option("--leaves", is_flag=True, help="Only modules without children.")
@click.option("--no-forward", is_flag=True, help="Do not run the model: names, types and parameters only.")
@pass_model
def layers_cmd(
    model: ModelOptions, image: str | None, layer_patterns: tuple[str, ...], leaves: bool, no_forward: bool,
) -> None:
    """Print the table of layers: name, type, output shape, layout, parameters.

    Output shapes come from one forward pass on IMAGE (default: the shipped cat photo).
    """
    from ..listing import list_layers  # lazy: PyTorch stays out of `featuremaps --help`

    net, preprocess = model.load()
    x = None if no_forward else preprocess(model.image(image))
    table = list_layers(net, x, layers=parse_layers(layer_patterns) or "*", leaves_only=leaves)
    click.echo(str(table))
    click.echo(f"\n{len(table)} rows; select layers by these names, globs ('*conv*') or types.", err=True)
