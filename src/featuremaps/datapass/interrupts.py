"""Steps of a dataset pass that a Ctrl-C must not cut in two.

A pass merges each batch into its running state and then counts the batch
(the images read, the position in the dataset). A Ctrl-C between those
steps would leave a state that holds a batch it has not counted, or only
part of one, which no checkpoint may save. :func:`interrupts_held` holds a
Ctrl-C back while such a step runs and raises it right after, so an
interrupted pass can always save what it has done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["interrupts_held"]


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back while the block runs; one that came is handled right after the block.

    Takes effect in the main thread, where SIGINT has a Python handler (the
    default one raises :class:`KeyboardInterrupt`); elsewhere the block runs
    as it is. The handler in place before comes back on exit, and a Ctrl-C
    that came meanwhile is passed to it then (unless the block raised: then
    that exception goes on).

    Example:
        >>> import os, signal
        >>> try:
        ...     with interrupts_held():
        ...         os.kill(os.getpid(), signal.SIGINT)
        ...         done = True                      # the block ends whole ...
        ... except KeyboardInterrupt:
        ...     print("raised after the block:", done)   # ... and then the Ctrl-C comes
        raised after the block: True
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    came: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: came.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if came:
        previous(*came[0])
