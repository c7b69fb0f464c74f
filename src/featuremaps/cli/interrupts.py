"""Ctrl-C that always reaches the command: the command line's interrupt handling.

Three things can keep a Ctrl-C from ending a command with ``Aborted.``:

- **It lands in another thread.** The kernel may hand SIGINT to any thread that
  does not block it, such as NumPy's BLAS pool or PyTorch's OpenMP threads. Then
  (seen on Python 3.11) the main thread acts on it only when something else
  wakes its interpreter: a command busy in one long wait would never stop.
  :func:`watch_interrupts` listens for every SIGINT through
  :func:`signal.set_wakeup_fd` and, when the main thread has not taken it within
  0.1 s, sends it to the main thread itself.
- **It lands inside PyTorch's import,** which is not safe to interrupt: the
  interrupt may be swallowed (PyTorch turns a failed import of NumPy into a
  warning; the command then runs on) or end in an abort from C++ (pybind11's
  ``terminate called after throwing ... KeyboardInterrupt``). :func:`import_torch`
  holds a Ctrl-C back until the import is done, then raises it. It also blocks
  SIGINT in the main thread meanwhile, so the threads that the import starts
  (NumPy's BLAS pool) inherit a mask that leaves SIGINT to the main thread.
- **A library swallows it** anyway: the command then fails later with an error
  that has nothing to do with it. :func:`interrupt_seen` tells the command line's
  error path (``featuremaps.cli.command``) to report that error as the abort.

Only the first Ctrl-C raises :class:`KeyboardInterrupt`; a second one while the
command unwinds is ignored (its clean-up is not cut short).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

__all__ = ["import_torch", "interrupt_seen", "watch_interrupts"]

_SEEN = threading.Event()  # a Ctrl-C came while watch_interrupts was in effect
_HOLDING = threading.Event()  # import_torch is importing: a Ctrl-C is raised when it is done
_GRACE_S = 0.1  # how long the main thread has to take a Ctrl-C itself before it is sent there


def interrupt_seen() -> bool:
    """Whether a Ctrl-C came while :func:`watch_interrupts` was in effect (in this process).

    Example:
        >>> interrupt_seen()
        False
    """
    return _SEEN.is_set()


def _on_sigint(signum: int, frame: Any) -> None:
    if _SEEN.is_set():
        return  # a second Ctrl-C (or the watcher's copy of the first): the command is already unwinding
    _SEEN.set()
    if not _HOLDING.is_set():
        raise KeyboardInterrupt


class _Watcher:
    """A thread that hears every SIGINT (:func:`signal.set_wakeup_fd`) and sends one that the main thread has
    not taken within the grace time to the main thread itself."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._run, args=(threading.get_ident(),), name="featuremaps-ctrl-c",
                                       daemon=True)
        self.thread.start()

    def _run(self, main_thread: int) -> None:
        while True:
            try:
                got = os.read(self.read_fd, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            if not got or 0 in got:  # closed, or the stop byte
                return
            if signal.SIGINT in got and not _SEEN.wait(_GRACE_S):
                with contextlib.suppress(OSError):
                    signal.pthread_kill(main_thread, signal.SIGINT)
                return  # one Ctrl-C is all a command needs; the main thread now has it

    def stop(self) -> None:
        signal.set_wakeup_fd(self.previous_fd)
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"\0")  # the stop byte
        self.thread.join()
        os.close(self.read_fd)
        os.close(self.write_fd)


@contextlib.contextmanager
def watch_interrupts() -> Iterator[None]:
    """While in effect, a Ctrl-C raises :class:`KeyboardInterrupt` in the main thread, whichever thread gets it.

    It also records the Ctrl-C for :func:`interrupt_seen`. Takes effect only in
    the main thread where SIGINT has Python's default handler (a SIGINT that a
    shell ignores stays ignored); the previous handler and wakeup file come back
    on exit. (Without POSIX threads' signals, as on Windows: the handler only.)

    Example:
        >>> with watch_interrupts():
        ...     interrupt_seen()
        False
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    watcher = _Watcher() if hasattr(signal, "pthread_kill") else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def import_torch() -> None:
    """Import PyTorch with Ctrl-C held back until the import is done; then a Ctrl-C that came raises.

    Under :func:`watch_interrupts` a Ctrl-C during the import is recorded and
    raised as :class:`KeyboardInterrupt` right after it, from a whole PyTorch.
    Where the platform has signal masks, SIGINT is blocked in this thread
    during the import (threads started by it inherit that).

    Example:
        >>> import_torch(); "torch" in sys.modules
        True
    """
    if "torch" in sys.modules:
        return
    masks = hasattr(signal, "pthread_sigmask")  # (not on Windows)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if masks else None
    ours = signal.getsignal(signal.SIGINT) is _on_sigint
    if ours:
        _HOLDING.set()
    try:
        import torch  # noqa: F401  # lazy: imported by a command, never by `featuremaps --help`
    finally:
        _HOLDING.clear()
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # (a Ctrl-C pending for this thread comes now)
    if ours and _SEEN.is_set():
        raise KeyboardInterrupt
