"""The ``featuremaps`` console script's entry point.

It lives outside the ``featuremaps`` package so that it runs before any of
the package's imports: a Ctrl-C at any point from here on ends the command
with one ``Aborted.`` line and exit status 130 instead of a traceback. Here
that covers importing the command line itself (click; the package imports
lazily, so no PyTorch yet); from then on :func:`featuremaps.cli.main` and
each command's one error path (``featuremaps.cli.command``) cover parsing,
PyTorch's import inside the command, loading and computing. (Only the
interpreter's own start-up, the few milliseconds before this module runs, is
out of its reach.)
"""

from __future__ import annotations

import sys  # built in: importing nothing else here keeps the unprotected start short
from typing import NoReturn


def _ignore_interrupts() -> None:
    signal = sys.modules.get("signal")
    if signal is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _aborted(hard: bool) -> NoReturn:
    _ignore_interrupts()
    try:
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "Aborted.\n")  # the newline closes ^C
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if hard:
        # Interrupted inside the imports: nothing of ours has started, and a half-imported torch can
        # hang in the interpreter's shutdown (its native thread pools), so skip that shutdown.
        import os

        os._exit(130)
    sys.exit(130)


def main() -> None:
    """Run the command line; Ctrl-C during the imports exits 130 too."""
    try:
        try:
            import signal  # noqa: F401 - loaded inside the try: an interrupt here is handled too

            from featuremaps.cli import main as cli_main
        except KeyboardInterrupt:
            _aborted(hard=True)
        try:
            cli_main()
        except KeyboardInterrupt:
            _aborted(hard=False)
    finally:
        # Past this point the command has finished or is exiting: a late
        # Ctrl-C (during interpreter shutdown) must not print a traceback.
        _ignore_interrupts()


if __name__ == "__main__":  # pragma: no cover
    main()
