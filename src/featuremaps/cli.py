"""The ``featuremaps`` command line: a thin shell over the library.

Every command parses its options, builds the model from a spec, calls the
library and turns library errors into one ``Error: ...`` line with exit
status 1 (usage errors exit with 2, as click does). ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from ._outdir import MARKER

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_OUT = "featuremaps-out"


#: Commands that live in their own modules, imported only when used.
_LAZY_COMMANDS = {
    "atlas": ("featuremaps.cli_atlas", "atlas_cmd"),
    "cam": ("featuremaps.cli_cam", "cam_cmd"),
    "concepts": ("featuremaps.cli_concepts", "concepts_cmd"),
    "synthesize": ("featuremaps.cli_synth", "synth_cmd"),
}


_CLI_WORDS = (
    (re.compile(r"\btrust_pickle=True(?: \(CLI: --trust-pickle\))?"), "--trust-pickle"),
    (re.compile(r"\bweights='(\w+)'"), r"--weights \1"),
    (re.compile(r"\bweights=PATH\b"), "--weights PATH"),
    (re.compile(r"\bweights=(?=')"), "--weights "),
)


def cli_wording(message: str) -> str:
    """A library message in the command line's words: its options, not Python keywords.

    Example:
        >>> cli_wording("pass weights=PATH to a state dict or weights='random'; trust_pickle=True (CLI: --trust-pickle)")
        'pass --weights PATH to a state dict or --weights random; --trust-pickle'
    """
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return message


class _Group(click.Group):
    """Turns every error into one line and an exit code, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            module, attr = _LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:  # noqa: BLE001 - the CLI's one catch-all
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from .errors import FeatureMapsError

            if isinstance(exc, FeatureMapsError):
                message = cli_wording(str(exc))
            elif isinstance(exc, OSError) and exc.filename:
                message = f"{exc.strerror or exc}: {exc.filename}"
            else:
                message = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
            raise click.ClickException(message.splitlines()[0] if message else type(exc).__name__) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featuremaps")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """See what a PyTorch model sees: capture and save the feature maps of any layer.

    Without --model, commands use the embedded pretrained EfficientNet-Lite0;
    without an IMAGE, the shipped photo of a cat.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


_INPUT_KEY = "featuremaps.input"  # where the input options wait in ctx.meta for _load and _image


def _keep_input_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store an input option (--channels, --mean, ...) for :func:`_load` and :func:`_image`."""
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_INPUT_KEY, {})[param.name] = value
    return value


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        floats = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, e.g. 0.5 or 0.485,0.456,0.406; got {value!r}")
    return _keep_input_option(ctx, param, floats if len(floats) > 1 else floats[0])


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in value.lower().replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"expected a positive size, e.g. 224 or 256,320 (height,width); got {value!r}")
    return _keep_input_option(ctx, param, parts[0] if len(parts) == 1 else parts)


def _window(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from .errors import ImageLoadError
    from .medical import parse_window

    try:
        parse_window(value, "--window")
    except ImageLoadError as exc:
        raise click.BadParameter(str(exc)) from None
    return _keep_input_option(ctx, param, value)


def input_options(f: F) -> F:
    """How the image reaches the model: channels, size, normalization, classes, window.

    The values wait in ``ctx.meta`` (not in the command's arguments) for
    :func:`_load` (which builds the preprocessing from them) and :func:`_image`.
    """
    keep: dict[str, Any] = {"expose_value": False}
    own = {opt for p in getattr(f, "__click_params__", []) for opt in getattr(p, "opts", [])}
    f = click.option("--window", callback=_window, metavar="C,W|PRESET", help=(
        "Window for DICOM and greyscale images: CENTER,WIDTH, a preset (lung, bone, soft_tissue, brain, "
        "mediastinum, ...), 'full' or 'file'. Default: the file's own window."), **keep)(f)
    f = click.option("--classes", "classes", callback=_keep_input_option, type=click.Path(dir_okay=False),
                     help="Text file with the model's class names, one per line.", **keep)(f)
    if "--size" not in own:  # synthesize has its own --size (the image it draws)
        f = click.option("--size", callback=_size, metavar="N|H,W", help="Model input size (centre crop).", **keep)(f)
    f = click.option("--std", callback=_floats, metavar="S[,S...]",
                     help="Normalization std per channel in the 0-1 scale (one value for all).", **keep)(f)
    f = click.option("--mean", callback=_floats, metavar="M[,M...]",
                     help="Normalization mean per channel in the 0-1 scale (one value for all).", **keep)(f)
    f = click.option("--channels", callback=_keep_input_option, type=click.IntRange(min=1),
                     help="Input channels of the model (1 for greyscale; default: read from its first conv).",
                     **keep)(f)
    return f


def model_options(f: F) -> F:
    """The options every command uses to build a model from a spec (and feed it images)."""
    f = input_options(f)
    f = click.option(
        "--trust-pickle", is_flag=True,
        help="Allow loading a pickled full model (runs code from the file: only for files you trust).",
    )(f)
    f = click.option("--device", default=None, help="Device for the model, e.g. cpu, cuda, cuda:1, mps.")(f)
    f = click.option(
        "--weights", default=None,
        help="Weights for --model: a state-dict file, 'random', or 'download' (fetches the library's own).",
    )(f)
    f = click.option(
        "--model", "model_spec", default="efficientnet_lite0", show_default=True,
        help="Model spec: efficientnet_lite0, torchvision:NAME, timm:NAME, a TorchScript file, "
        "or module:factory (with --weights).",
    )(f)
    return f


def _input_options() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_INPUT_KEY, {})) if ctx is not None else {}


def _load(model_spec: str, weights: str | None, device: str | None, trust_pickle: bool) -> Any:
    import os

    from . import models
    from .models import check_channels

    if ":" in model_spec and not Path(model_spec).exists() and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # module:factory finds modules in the current folder (never shadowing)
    opts = _input_options()
    ctx = click.get_current_context(silent=True)
    if "window" in opts and ctx is not None and ctx.info_name in ("atlas", "synthesize"):
        raise click.UsageError(f"--window applies to an IMAGE argument, which '{ctx.info_name}' does not take")
    loaded = models.load_model(model_spec, weights=weights, device=device, trust_pickle=trust_pickle)
    keys = ("channels", "mean", "std", "size", "classes")
    if any(k in opts for k in keys):
        prep = models.Preprocess(loaded.preprocess.card, device=loaded.preprocess.device,
                                 **{k: opts[k] for k in keys if k in opts})
        loaded = models.LoadedModel(loaded.model, prep)
    check_channels(loaded.model, _probe(loaded.preprocess.card.channels), loaded.preprocess)
    return loaded


def _probe(channels: int) -> Any:
    """A tiny batch with ``channels`` channels, only to compare channel counts (never run)."""
    import torch

    return torch.zeros(1, channels, 1, 1)


def _image(image: str | None) -> Any:
    """IMAGE, or the shipped cat photo, as a path the preprocessing loads (so its errors name the file);
    with --window, the image read through that window."""
    from .io import load_image, sample_image

    path = image if image is not None else str(sample_image("cat"))
    window = _input_options().get("window")
    return path if window is None else load_image(path, window=window)


OUTPUT_MARKER = MARKER  # the manifest in every folder featuremaps writes (see featuremaps._outdir)


def _output_folder(out_dir: str, create: bool = True) -> Path:
    """Check ``-o``: a new or empty folder, or one holding only what featuremaps wrote; then (``create``) make it.

    The commands that write several files with names of their own never put
    them among a user's files: a folder holding anything featuremaps did not
    write (by its manifest, ``.featuremaps``) is refused. They check before
    any work; with ``create`` the folder is made and, when the command ends,
    what it holds is recorded in the manifest as ours.
    """
    from ._outdir import OutputFolderError, check_output_folder

    try:
        out = check_output_folder(out_dir)
    except OutputFolderError as exc:
        raise click.BadParameter(str(exc), param_hint="'-o'") from None
    if not create:
        return out
    out.mkdir(parents=True, exist_ok=True)
    _mark(out)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        # everything in the folder was checked to be ours; what the command adds is ours too
        ctx.call_on_close(lambda: _mark(out) if out.is_dir() else None)
    return out


def _mark(folder: Path, entries: list[str] | None = None) -> None:
    """Record ``entries`` of ``folder`` (default: all) as written by featuremaps: later runs may replace them."""
    from ._outdir import record

    record(folder, entries)


def _mark_new_folder(out_file: str) -> Callable[[], None]:
    """For commands writing one file: once written, record it in its folder's manifest where that is ours.

    Returns the function to call after writing. A folder the write creates
    becomes ours; a folder featuremaps wrote before records the new file; a
    folder of the user's is left unmarked. (The default folder,
    featuremaps-out, then takes every command's output in turn.)
    """
    from ._outdir import foreign_entries

    folder = Path(out_file).parent
    new = not folder.exists()
    ours = new or ((folder / OUTPUT_MARKER).is_file() and not foreign_entries(folder))

    def mark() -> None:
        if ours and folder.is_dir() and Path(out_file).is_file():
            _mark(folder, [Path(out_file).name])

    return mark


def _parse_layers(values: tuple[str, ...]) -> Any:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


@cli.command("layers")
@click.argument("image", required=False)
@model_options
@click.option("--layers", "layer_patterns", multiple=True, help="Only layers matching these names/globs.")
@click.option("--leaves", is_flag=True, help="Only modules without children.")
@click.option("--no-forward", is_flag=True, help="Do not run the model: names, types and parameters only.")
def layers_cmd(
    image: str | None, model_spec: str, weights: str | None, device: str | None, trust_pickle: bool,
    layer_patterns: tuple[str, ...], leaves: bool, no_forward: bool,
) -> None:
    """Print the table of layers: name, type, output shape, layout, parameters.

    Output shapes come from one forward pass on IMAGE (default: the shipped cat photo).
    """
    from .listing import list_layers

    model, preprocess = _load(model_spec, weights, device, trust_pickle)
    selector = _parse_layers(layer_patterns) or "*"
    x = None if no_forward else preprocess(_image(image))
    table = list_layers(model, x, layers=selector, leaves_only=leaves)
    click.echo(str(table))
    click.echo(f"\n{len(table)} rows; select layers by these names, globs ('*conv*') or types.", err=True)


@cli.command("maps")
@click.argument("image", required=False)
@model_options
@click.option("--layers", "layer_patterns", multiple=True,
              help="Layers to capture: names, globs ('*conv*'), 're:REGEX'; repeat or comma-separate. "
              "Default: every leaf layer with a spatial output.")
@click.option("-o", "--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Output directory.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Show only the K channels with the highest --order statistic per layer.")
@click.option("--order", type=click.Choice(["mean", "max", "var"]), default="max", show_default=True,
              help="Statistic that ranks channels for --top-k.")
@click.option("--norm", type=click.Choice(["auto", "channel", "layer", "global", "robust", "symmetric"]),
              default="auto", show_default=True, help="Colour scale: per channel, per layer, shared across layers...")
@click.option("--cmap", default=None, help="Any matplotlib colormap name (default viridis; RdBu_r for signed maps).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "svg", "pdf"]), default="png",
              show_default=True, help="Picture format.")
@click.option("--labels/--no-labels", default=False, help="Label each channel with its index and range.")
@click.option("--tensors/--no-tensors", default=True, show_default=True,
              help="Also save the maps themselves to maps.safetensors.")
@click.option("--max-bytes", default=None, help="Cap on the memory kept, e.g. 500MB.")
def maps_cmd(
    image: str | None, model_spec: str, weights: str | None, device: str | None, trust_pickle: bool,
    layer_patterns: tuple[str, ...], out_dir: str, top_k: int | None, order: str, norm: str, cmap: str | None,
    fmt: str, labels: bool, tensors: bool, max_bytes: str | None,
) -> None:
    """Capture the feature maps of IMAGE and draw every layer.

    Writes one picture per layer (a channel grid) under DIR/layers/, an
    index.html that shows them all, summary.txt (shapes and statistics per
    layer), stats.png (statistics across depth), predictions.txt (the top-5
    classes) and maps.safetensors (the maps, loadable with
    featuremaps.load_maps).
    """
    from .capture import get_feature_maps
    from .render import colormap_lut
    from .visualize import plot_stats, visualize

    if cmap is not None:
        colormap_lut(cmap)  # fail early on a bad colormap name
    _output_folder(out_dir, create=False)
    model, preprocess = _load(model_spec, weights, device, trust_pickle)
    img = _image(image)
    x = preprocess(img)
    maps = get_feature_maps(model, x, layers=_parse_layers(layer_patterns), max_bytes=max_bytes)
    out = _output_folder(out_dir)
    written: list[Path] = []
    top = _top_classes(maps.output, preprocess)
    vis = visualize(maps, channels=top_k, order=order if top_k else None, norm=norm, cmap=cmap, labels=labels)
    with _progress(len(vis), "drawing layers") as advance:
        written.append(vis.save(out, format=fmt, progress=lambda name: advance()))
    summary = out / "summary.txt"
    summary.write_text(str(maps.summary()) + "\n", encoding="utf-8")
    written.append(summary)
    stats_png = out / "stats.png"
    plot_stats(maps, title=f"{model_spec}: statistics per layer").savefig(stats_png, dpi=90)
    written.append(stats_png)
    if tensors:
        written.append(maps.save(out / "maps.safetensors"))
    if top:
        pred = out / "predictions.txt"
        pred.write_text("".join(f"{p:.4f}\t{i}\t{name}\n" for i, name, p in top), encoding="utf-8")
        written.append(pred)
        best = top[0]
        click.echo(f"top-1: {best[1]} (class {best[0]}, p={best[2]:.3f})")
    click.echo(f"captured {len(maps)} layer{'' if len(maps) == 1 else 's'} ({maps.nbytes / 1e6:.1f} MB) from {model_spec}")
    click.echo(f"wrote {len(vis)} layer pictures to {out / 'layers'}")
    for p in written:
        click.echo(f"wrote {p}")


@cli.command("report")
@click.argument("image", required=False)
@model_options
@click.option("--layers", "layer_patterns", multiple=True,
              help="Layers to show: names, globs, 're:REGEX'. Default: every leaf layer with a spatial output.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Show only the K most active channels per layer (default: all).")
@click.option("--max-tile", type=click.IntRange(min=4, max=224), default=32, show_default=True,
              help="Channel thumbnails are pooled to at most this many pixels per side.")
@click.option("--photo-size", type=click.IntRange(min=32, max=4096), default=448, show_default=True,
              help="Longest side of the embedded photo in pixels.")
@click.option("--cam-method", "cam_methods", multiple=True,
              help="CAM methods to show (repeat; default: the gradient-based ones). See `featuremaps cam --help`.")
@click.option("--cam-layer", default="auto", show_default=True, help="The CAM target layer.")
@click.option("--no-cams", is_flag=True, help="Leave out the CAM section.")
@click.option("--no-metrics", is_flag=True, help="Skip the faithfulness scores (faster).")
@click.option("--synthesize", "synth_layers", multiple=True,
              help="Also synthesize an image exciting each shown channel of these layers (slow; off by default).")
@click.option("--synth-steps", type=click.IntRange(min=1), default=128, show_default=True,
              help="Optimization steps per synthesized image.")
@click.option("--atlas", "atlas_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="An atlas folder of the same model: channels link to their top dataset examples there.")
@click.option("--title", default=None, help="Page title.")
@click.option("-o", "--out", "out_path", default=f"{DEFAULT_OUT}/report.html", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the page.")
@click.option("--serve", is_flag=True, help="Serve the page on http://127.0.0.1 until Ctrl-C.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port for --serve (default: a free one).")
def report_cmd(
    image: str | None, model_spec: str, weights: str | None, device: str | None, trust_pickle: bool,
    layer_patterns: tuple[str, ...], top_k: int | None, max_tile: int, photo_size: int, cam_methods: tuple[str, ...],
    cam_layer: str, no_cams: bool, no_metrics: bool, synth_layers: tuple[str, ...], synth_steps: int,
    atlas_dir: str | None, title: str | None, out_path: str, serve: bool, port: int,
) -> None:
    """Turn a model and IMAGE into one self-contained interactive HTML page.

    Without arguments: the embedded pretrained EfficientNet-Lite0 on the
    shipped cat photo. The page works offline and makes no network requests.
    """
    from .report import report
    from .report.build import DEFAULT_CAM_METHODS

    model, preprocess = _load(model_spec, weights, device, trust_pickle)
    img_path = image
    src: Any = image if image is None or "window" not in _input_options() else _named(_image(image), image)
    with _progress_stages() as progress:
        rep = report(
            model, src, preprocess=preprocess, layers=_parse_layers(layer_patterns), top_k=top_k,
            max_tile=max_tile, cam_methods=() if no_cams else (cam_methods or DEFAULT_CAM_METHODS),
            cam_layer=cam_layer, metrics=not no_metrics, title=title, progress=progress,
            synthesize=_parse_layers(synth_layers), synth_steps=synth_steps, atlas=atlas_dir, photo_size=photo_size,
            atlas_href=_relative_href(atlas_dir, out_path) if atlas_dir else None,
        )
    mark = _mark_new_folder(out_path)
    path = rep.save(out_path)
    mark()
    top = rep.data["predictions"]
    if top:
        click.echo(f"top-1: {top[0]['name']} (class {top[0]['index']}, p={top[0]['p']:.3f})")
    meta = rep.data["meta"]
    click.echo(
        f"{meta['layers_total']} layers, {meta['channels']} channels, {rep.nbytes / 1e6:.1f} MB, "
        f"{rep.seconds:.1f} s" + (f" (image {img_path})" if img_path else "")
    )
    click.echo(f"wrote {path.resolve()}")
    if serve:
        _serve(path, port, atlas_dir)


def _named(img: Any, path: str) -> Any:
    """``img`` carrying the file name it came from (for titles), as PIL does for opened files."""
    img.filename = path
    return img


def _relative_href(target: str, page: str) -> str:
    """A link from the page's folder to ``target`` (POSIX separators)."""
    import os

    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def _serve(path: Path, port: int, atlas_dir: str | None = None) -> None:
    """Serve the page (and the atlas pages it links) on 127.0.0.1 only, nothing else, until Ctrl-C."""
    from .report.serve import serve_report

    with serve_report(path, atlas=atlas_dir, port=port) as server:
        others = len(server.files) - 1
        what = "this page" + (f" and the {others} atlas files it links" if others else "")
        click.echo(f"serving {server.url()} (Ctrl-C to stop)")
        click.echo(f"on 127.0.0.1 only: {what}; nothing else of the folder, requests for other hosts refused")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")


@contextmanager
def _progress_stages() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar fed with ``(stage, done, total)`` calls."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda stage, done, total: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update


@contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr (hidden when not a terminal or for few items)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if total < 8 or not console.is_terminal:
        yield lambda: None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def _top_classes(output: Any, preprocess: Any, k: int = 5) -> list[tuple[int, str, float]]:
    from .models import top_classes

    return top_classes(output, getattr(preprocess, "card", None), k)


def _interrupted() -> None:
    """Ctrl-C: one line and exit status 130 (128 + SIGINT), as shells report it; a second Ctrl-C is ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "Aborted.\n")  # the newline closes ^C
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``featuremaps`` command line.

    Ctrl-C anywhere (while parsing, loading, computing) ends it with one
    ``Aborted.`` line and exit status 130; errors print one ``Error: ...``
    line (exit 1, usage errors 2). The console script enters through
    ``_featuremaps_cli.main``, which also covers the package's imports.
    """
    try:
        code = cli.main(args=argv, prog_name="featuremaps", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt):
            _interrupted()
        click.echo("Aborted!", err=True)  # end of input at a prompt
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except BrokenPipeError:
        sys.exit(1)  # stdout closed early (| head): nothing more to say
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
