"""One progress protocol for every long call: ``progress(stage, done, total)``.

Library functions that take a while (a dataset pass, a synthesis run, a report, a perturbation CAM) accept
``progress=`` as one of:

- ``False`` or ``None``: silent;
- ``True``: a rich progress bar on stderr, one row per stage, with a count, a rate and the time left (shown
  only on a terminal or in a notebook, so logs and pipes stay clean);
- a callable ``progress(stage: str, done: int, total: int | None) -> None``, called with the stage's name,
  the units done so far in that stage, and the stage's total (``None`` when unknown);
- a :class:`Watch`: a callable that sees every update while the bar is drawn as with ``True`` (a caller
  timing the stages, like the command line, keeps the library's bar and its units).

Call :func:`reporter` once per call to turn that argument into a callable, inside a ``with`` block that
closes the bar::

    with reporter(progress, unit="images") as report:
        for i, batch in enumerate(batches, 1):
            ...
            report("atlas", i * batch_size, n_images)

rich is imported only when a bar is shown (``import featuremaps`` stays light).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Progress", "ProgressArg", "Watch", "reporter", "silent"]

#: The one progress callback shape: ``(stage, done, total)``.
Progress = Callable[[str, int, Union[int, None]], None]


@dataclass(frozen=True)
class Watch:
    """A ``progress=`` argument that calls ``callback`` with every update, and draws the bar when ``bar``.

    The bar is the one ``progress=True`` draws, with the units the call gives each stage.

    Example:
        >>> seen = []
        >>> with reporter(Watch(lambda *update: seen.append(update), bar=False), unit="images") as report:
        ...     report("pass", 1, 2)
        >>> seen
        [('pass', 1, 2)]
    """

    callback: Progress
    bar: bool = True


#: What ``progress=`` accepts.
ProgressArg = Union[bool, None, Progress, Watch]


def silent(stage: str, done: int, total: int | None) -> None:
    """A progress callback that does nothing."""


@contextlib.contextmanager
def reporter(progress: ProgressArg, *, unit: str = "", min_total: int = 0) -> Iterator[Progress]:
    """Turn a ``progress=`` argument into a ``(stage, done, total)`` callable for the duration of a call.

    Args:
        progress: ``True`` for a rich bar on stderr, ``False``/``None`` for silence, a callable that
            receives every update unchanged, or a :class:`Watch` (both).
        unit: The unit shown after the counts and in the rate column (``"images"``, ``"forwards"``).
        min_total: Stages whose total is below this are not drawn (a bar for 2 items is noise).

    Yields:
        The callable to report progress with.

    Example:
        >>> seen = []
        >>> with reporter(lambda stage, done, total: seen.append((stage, done, total))) as report:
        ...     report("pass", 1, 2)
        >>> seen
        [('pass', 1, 2)]
        >>> with reporter(False) as report:
        ...     report("pass", 1, 2)
    """
    if progress is None or progress is False:
        yield silent
        return
    if isinstance(progress, Watch):
        watch = progress
        with reporter(watch.bar, unit=unit, min_total=min_total) as shown:

            def both(stage: str, done: int, total: int | None) -> None:
                watch.callback(stage, done, total)
                shown(stage, done, total)

            yield both
        return
    if callable(progress):
        yield progress
        return
    if progress is not True:
        raise TypeError(f"progress={progress!r}: pass True, False or a callable(stage, done, total)")
    with _rich_bar(unit, min_total) as update:
        yield update


@contextlib.contextmanager
def _rich_bar(unit: str, min_total: int) -> Iterator[Progress]:
    from rich.console import Console  # lazy: rich only when a bar is drawn
    from rich.progress import (  # lazy: as above
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress  # lazy: as above
    from rich.text import Text  # lazy: as above

    console = Console(stderr=True)
    if not (console.is_terminal or console.is_jupyter):
        yield silent
        return

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None and task.elapsed:
                speed = task.completed / task.elapsed
            label = f"{unit}/s" if unit else "/s"
            return Text(f"-- {label}" if speed is None else f"{speed:,.1f} {label}", style="progress.data.speed")

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [_Rate(), TimeElapsedColumn(), TimeRemainingColumn()]
    with RichProgress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if total is not None and total < min_total:
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
