"""The options commands share, as reusable click decorators, and the model they describe.

- :func:`model_options` adds ``--model --weights --device --trust-pickle`` and the input options
  ``--channels --mean --std --size --classes --window``. They are not passed to the command function one
  by one: click's callbacks gather them in one :class:`ModelOptions` (the command context's ``ctx.obj``),
  which the command receives through :data:`pass_model` and asks for the model (:meth:`ModelOptions.load`)
  and the image (:meth:`ModelOptions.image`).
- :func:`layers_option` and :func:`out_option` are the ``--layers`` and ``-o`` options, with
  :func:`parse_layers` turning repeated, comma-separated ``--layers`` into one list.

Nothing here imports PyTorch until a command runs (``featuremaps CMD --help`` stays fast).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from ..errors import ImageLoadError

if TYPE_CHECKING:
    from ..models import LoadedModel

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_OUT", "ModelOptions", "layers_option", "model_options", "out_option", "parse_layers",
    "pass_model",
]

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_OUT = "featuremaps-out"
_PREPROCESS_KEYS = ("channels", "mean", "std", "size", "classes")


@dataclass
class ModelOptions:
    """A command's model and input options, gathered by :func:`model_options`.

    Example:
        >>> opts = ModelOptions(preprocess={"size": 64})
        >>> opts.spec, opts.preprocess
        ('efficientnet_lite0', {'size': 64})
    """

    spec: str = DEFAULT_MODEL
    weights: str | None = None
    device: str | None = None
    trust_pickle: bool = False
    #: ``Preprocess`` overrides given on the command line (channels, mean, std, size, classes).
    preprocess: dict[str, Any] = field(default_factory=dict)
    window: str | None = None

    def load(self, device: str | None = None, *, volume: bool = False) -> LoadedModel:
        """The model and its preprocessing (``device`` overrides ``--device``, e.g. a torchrun rank's GPU).

        With ``volume``, the model takes the volume as it is (no picture preprocessing, no 2-D channel probe;
        only ``--classes`` of the input options applies)."""
        from .. import models  # lazy: PyTorch stays out of `featuremaps --help`
        from ..models import check_channels  # lazy: as above

        if ":" in self.spec and not Path(self.spec).exists() and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())  # module:factory finds modules in the current folder (never shadowing)
        loaded = models.load_model(self.spec, weights=self.weights, device=device or self.device,
                                   trust_pickle=self.trust_pickle)
        if volume:
            return _for_volume(loaded, self.preprocess)
        if self.preprocess:
            prep = models.Preprocess(loaded.preprocess.card, device=loaded.preprocess.device, **self.preprocess)
            loaded = models.LoadedModel(loaded.model, prep)
        check_channels(loaded.model, _probe(loaded.preprocess.card.channels), loaded.preprocess)
        return loaded

    def image(self, image: str | None) -> Any:
        """IMAGE, or the shipped cat photo, as a path the preprocessing loads (so its errors name the file);
        with ``--window``, the image read through that window."""
        from ..io import load_image, sample_image  # lazy: as in load

        path = image if image is not None else str(sample_image("cat"))
        return path if self.window is None else load_image(path, window=self.window)

    def volume(self, image: str | None) -> Any:
        """IMAGE as a :class:`~featuremaps.Volume` (``--window`` applied) when it is a folder (a DICOM series)
        or a 3-D NIfTI file, else None (a picture)."""
        from ..volume import is_volume_path, load_volume  # lazy: numpy and nibabel only when a command runs

        if image is None or not is_volume_path(image):
            return None
        return load_volume(image, window=self.window)


def _for_volume(loaded: LoadedModel, given: dict[str, Any]) -> LoadedModel:
    """The model for a volume: the volume goes to it as it is, so the picture options (size, channels, mean,
    std) are refused, never silently dropped; ``--classes`` names its outputs as for a picture."""
    from .. import models  # lazy: as in ModelOptions.load

    pictures = [f"--{k}" for k in given if k != "classes"]
    if pictures:
        verb = "applies" if len(pictures) == 1 else "apply"
        raise click.UsageError(f"{', '.join(pictures)} {verb} to pictures; IMAGE is a volume, which goes to the model "
                               "as it is (use the API's preprocess= to transform a volume)")
    if "classes" not in given:
        return loaded
    prep = models.Preprocess(loaded.preprocess.card, device=loaded.preprocess.device, classes=given["classes"])
    return models.LoadedModel(loaded.model, prep, name=loaded.name)


def _probe(channels: int) -> Any:
    """A tiny batch with ``channels`` channels, only to compare channel counts (never run)."""
    import torch

    return torch.zeros(1, channels, 1, 1)


#: Hands a command its :class:`ModelOptions` (``@pass_model`` before the function: its first argument).
pass_model = click.make_pass_decorator(ModelOptions, ensure=True)


def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store a model option on the command's :class:`ModelOptions` (``ctx.obj``)."""
    if value is None or param.name is None:
        return value
    opts = ctx.ensure_object(ModelOptions)
    if param.name in _PREPROCESS_KEYS:
        opts.preprocess[param.name] = value
    else:
        setattr(opts, param.name, value)
    return value


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        floats = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, e.g. 0.5 or 0.485,0.456,0.406; got {value!r}")
    return _keep(ctx, param, floats if len(floats) > 1 else floats[0])


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in value.lower().replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"expected a positive size, e.g. 224 or 256,320 (height,width); got {value!r}")
    return _keep(ctx, param, parts[0] if len(parts) == 1 else parts)


def _window(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from ..medical import parse_window  # lazy: numpy and the DICOM code only when --window is given

    try:
        parse_window(value, "--window")
    except ImageLoadError as exc:
        raise click.BadParameter(str(exc)) from None
    return _keep(ctx, param, value)


def _no_window(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is not None:
        raise click.UsageError(f"--window applies to an IMAGE argument, which '{ctx.info_name}' does not take")
    return None


def model_options(*, image: bool = True, input_size: bool = True) -> Callable[[F], F]:
    """The options that build a model from a spec and feed it images, gathered in :class:`ModelOptions`.

    Args:
        image: Whether the command takes an IMAGE (else ``--window`` is refused with a usage error).
        input_size: Whether to add ``--size`` (synthesize has its own: the size of the image it draws).
    """
    hidden: dict[str, Any] = {"expose_value": False}

    def decorate(f: F) -> F:
        f = click.option("--window", callback=_window if image else _no_window, metavar="C,W|PRESET", help=(
            "Window for DICOM and greyscale images: CENTER,WIDTH, a preset (lung, bone, soft_tissue, brain, "
            "mediastinum, ...), 'full' or 'file'. Default: the file's own window."), **hidden)(f)
        f = click.option("--classes", callback=_keep, type=click.Path(dir_okay=False),
                         help="Text file with the model's class names, one per line.", **hidden)(f)
        if input_size:
            f = click.option("--size", callback=_size, metavar="N|H,W", help="Model input size (centre crop).",
                             **hidden)(f)
        f = click.option("--std", callback=_floats, metavar="S[,S...]",
                         help="Normalization std per channel in the 0-1 scale (one value for all).", **hidden)(f)
        f = click.option("--mean", callback=_floats, metavar="M[,M...]",
                         help="Normalization mean per channel in the 0-1 scale (one value for all).", **hidden)(f)
        f = click.option("--channels", callback=_keep, type=click.IntRange(min=1),
                         help="Input channels of the model (1 for greyscale; default: read from its first conv).",
                         **hidden)(f)
        f = click.option("--trust-pickle", "trust_pickle", is_flag=True, callback=_keep, help=(
            "Allow loading a pickled full model (runs code from the file: only for files you trust)."), **hidden)(f)
        f = click.option("--device", callback=_keep, help="Device for the model, e.g. cpu, cuda, cuda:1, mps.",
                         **hidden)(f)
        f = click.option("--weights", callback=_keep, help=(
            "Weights for --model: a state-dict file, 'random' (seeded: the same every run), or 'download' "
            "(fetches the library's own)."),
            **hidden)(f)
        f = click.option("--model", "spec", default=DEFAULT_MODEL, show_default=True, callback=_keep, help=(
            "Model spec: efficientnet_lite0, torchvision:NAME, timm:NAME, xrv:NAME (torchxrayvision), "
            "a TorchScript file, or module:factory (with --weights)."), **hidden)(f)
        return f

    return decorate


def parse_layers(values: tuple[str, ...]) -> list[str] | None:
    """Repeated, comma-separated ``--layers`` values as one list (``None`` when none were given).

    Example:
        >>> parse_layers(("_blocks.1?.*, _conv_head", "re:fc$")), parse_layers(())
        (['_blocks.1?.*', '_conv_head', 're:fc$'], None)
    """
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def layers_option(help: str, name: str = "--layers") -> Callable[[F], F]:
    """A repeatable ``--layers`` option (the command receives ``layer_patterns``; see :func:`parse_layers`)."""
    return click.option(name, "layer_patterns", multiple=True, help=help)


def out_option(default: str, help: str, *, folder: bool = True) -> Callable[[F], F]:
    """The ``-o/--out`` option: an output folder (the command receives ``out_dir``) or, with
    ``folder=False``, one output file (``out_path``)."""
    kind = click.Path(file_okay=False) if folder else click.Path(dir_okay=False)
    return click.option("-o", "--out", "out_dir" if folder else "out_path", default=default, show_default=True,
                        type=kind, help=help)
