"""The ``featuremaps`` group: its commands, listed from a table and imported only when one runs.

``featuremaps --help``, ``--version`` and usage errors answer from :data:`COMMANDS` alone, without importing
the command modules or PyTorch (click's lazy-group pattern); a command's module is imported when it is
named, and PyTorch when its body runs. ``tests/test_cli.py`` checks that the table's short help is each
command's own.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .. import __version__
from .command import Session, interrupted
from .interrupts import watch_interrupts

__all__ = ["COMMANDS", "cli", "main"]

#: name -> (module in featuremaps.cli, attribute, short help as ``featuremaps --help`` lists it).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "atlas": ("atlas", "atlas_cmd", "Find the K images (and patches) of IMAGE_DIR that activate each channel most."),
    "cam": ("cam", "cam_cmd", "Explain the model's prediction on IMAGE with class activation maps."),
    "concepts": ("concepts", "concepts_cmd", "Find the N concepts that LAYER's activations over IMAGE_DIR are made of."),
    "layers": ("layers", "layers_cmd", "Print the table of layers: name, type, output shape, layout, parameters."),
    "maps": ("maps", "maps_cmd", "Capture the feature maps of IMAGE and draw every layer."),
    "report": ("report", "report_cmd", "Turn a model and IMAGE into one self-contained interactive HTML page."),
    "synthesize": ("synth", "synth_cmd", "Synthesize images that make chosen channels of the model fire."),
}


class LazyGroup(click.Group):
    """A group whose commands come from :data:`COMMANDS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = COMMANDS[cmd_name]
        found = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
        self.add_command(found, cmd_name)
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS) if name not in self.commands]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in self.commands.items() if not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featuremaps")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """See what a PyTorch model sees: capture and save the feature maps of any layer.

    Without --model, commands use the embedded pretrained EfficientNet-Lite0;
    without an IMAGE, the shipped photo of a cat.
    """
    ctx.obj = Session(debug=debug)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``featuremaps`` command line.

    Ctrl-C anywhere (while parsing, loading, computing) ends it with one
    ``Aborted.`` line and exit status 130; errors print one ``Error: ...``
    line (exit 1, usage errors 2). The console script enters through
    ``_featuremaps_cli.main``, which also covers the package's imports.
    """
    try:
        with watch_interrupts():
            code: Any = cli.main(args=argv, prog_name="featuremaps", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt):
            interrupted()
        click.echo("Aborted!", err=True)  # end of input at a prompt
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        interrupted()
    except BrokenPipeError:
        sys.exit(1)  # stdout closed early (| head): nothing more to say
    sys.exit(code if isinstance(code, int) else 0)
