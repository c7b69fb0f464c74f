"""The one error path of the command line, shared by every command through :class:`Command`.

Rules:

- A library error (any exception a command raises) becomes one line, ``Error: ...``, and exit status 1;
  click's usage errors keep their exit status 2. Nothing else in the command line catches errors.
- ``featuremaps --debug CMD ...`` lets the exception through, so Python prints the traceback.
- Ctrl-C becomes one ``Aborted.`` line and exit status 130 (128 + SIGINT), as shells report it; so does
  an error after a Ctrl-C that a library swallowed (see ``featuremaps.cli.interrupts``).
- Messages use the command line's words (``--weights random``), not the library's (``weights='random'``).

Every command is declared with :func:`command` (a :class:`Command`), so the rules hold whether it runs
under the ``featuremaps`` group or alone (``CliRunner().invoke(maps_cmd, ...)``).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import click

from ..errors import FeatureMapsError
from .interrupts import import_torch, interrupt_seen

__all__ = ["Command", "Session", "cli_wording", "command", "interrupted", "one_line"]


@dataclass
class Session:
    """What the ``featuremaps`` group hands its commands (``ctx.obj`` of the root context)."""

    debug: bool = False


_CLI_WORDS = (
    (re.compile(r"\btrust_pickle=True(?: \(CLI: --trust-pickle\))?"), "--trust-pickle"),
    (re.compile(r"\bweights='(\w+)'"), r"--weights \1"),
    (re.compile(r"\bweights=PATH\b"), "--weights PATH"),
    (re.compile(r"\bweights=(?=')"), "--weights "),
    # CAM's classifier cannot be named on the command line: the way out there is another method
    (re.compile(r"pass fc= \(.*?tensor\), or use GradCAM"), "use --method gradcam"),
    (re.compile(r"pass fc= whose weight is \(classes, channels\)"), "use --method gradcam"),
    (re.compile(r"\buse GradCAM\b"), "use --method gradcam"),
    (re.compile(r"\bpass layer="), "pass --layer"),
    (re.compile(r"\bpass target="), "pass --target"),
    (re.compile(r"\bmax_bytes=(?=\S)"), "--max-bytes "),
    (re.compile(r"\braise max_bytes\b"), "raise --max-bytes"),
    (re.compile(r", or pass over_budget='mean', 'max' or 'pool' to keep reduced maps"), ""),
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


def one_line(exc: BaseException) -> str:
    """The ``Error: ...`` text for an exception a command raised: its first line, in the CLI's words.

    Example:
        >>> one_line(FeatureMapsError("no layer matches 'x'\\nlayers are: a, b"))
        "no layer matches 'x'"
        >>> one_line(FileNotFoundError(2, "No such file or directory", "cat.png"))
        'No such file or directory: cat.png'
        >>> one_line(ValueError("odd"))
        'ValueError: odd (run with --debug for the traceback)'
        >>> one_line(RuntimeError("\\n  Some tensors share memory"))
        'RuntimeError: Some tensors share memory (run with --debug for the traceback)'
    """
    if isinstance(exc, FeatureMapsError):
        message = cli_wording(str(exc))
    elif isinstance(exc, OSError) and exc.filename:
        message = f"{exc.strerror or exc}: {exc.filename}"
    else:
        text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        message = f"{type(exc).__name__}: {text} (run with --debug for the traceback)"
    return message.splitlines()[0] if message.strip() else type(exc).__name__


def _half_imported() -> set[str]:
    """Packages some of whose submodules are loaded but not the package itself: an import that was cut off."""
    return {name.rpartition(".")[0] for name in list(sys.modules) if "." in name} - sys.modules.keys()


def interrupted(hard: bool = False) -> NoReturn:
    """Ctrl-C: one ``Aborted.`` line and exit status 130; a second Ctrl-C is ignored.

    ``hard`` skips the interpreter's shutdown: after an import cut off half-way (PyTorch's, whose native
    thread pools can hang that shutdown) nothing of the command has run that needs it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "Aborted.\n")  # the newline closes ^C
        sys.stderr.flush()
        if hard:
            sys.stdout.flush()
    except (OSError, ValueError):
        pass
    if hard:
        os._exit(130)
    sys.exit(130)


class Command(click.Command):
    """A featuremaps command: its ``invoke`` is the one place where errors become lines and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        handler = signal.getsignal(signal.SIGINT)
        try:
            return self._invoke(ctx)
        finally:
            # (after a Ctrl-C, interrupted() ignores the next ones while the command unwinds; a caller in the
            # same process, such as a test or a notebook, gets its own handler back)
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, handler)

    def _invoke(self, ctx: click.Context) -> Any:
        cut_off_before = _half_imported()
        try:
            import_torch()  # every command's body needs it: imported here, where a Ctrl-C cannot cut it off
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            interrupted(hard=bool(_half_imported() - cut_off_before))
        except Exception as exc:  # noqa: BLE001 - the command line's one catch-all
            if interrupt_seen():  # the error of a Ctrl-C that something swallowed: the abort it is
                interrupted(hard=True)
            session = ctx.find_object(Session)
            if session is not None and session.debug:
                raise
            raise click.ClickException(one_line(exc)) from None


def command(name: str, **settings: Any) -> Callable[[Callable[..., Any]], Command]:
    """Declare a featuremaps command: ``click.command`` with the shared error path (:class:`Command`)."""
    return click.command(name, cls=Command, **settings)
