"""What the commands write and print, in one place: output folders, predictions, progress.

Output-folder rules (the library's ``.featuremaps`` manifest, see ``featuremaps._outdir``):

- A command that writes several files of its own names into ``-o DIR`` (maps, cam, atlas, concepts) calls
  :func:`output_folder` twice: ``create=False`` before any work (a folder holding anything featuremaps did not
  write is refused, exit 2), then ``create=True`` when it is about to write (the folder is made, and what it
  holds when the command ends is recorded in the manifest as ours).
- A command that writes one file (report, synthesize) calls :func:`mark_new_file` before writing and the
  function it returns after: the file is recorded where its folder is new or already ours, never in a
  folder of the user's.

Predictions: :func:`echo_top1`, :func:`echo_predictions` and :func:`write_predictions` (``predictions.txt``:
``probability<TAB>index<TAB>name`` per line) are the one way every command reports the top classes.

Progress: :func:`progress_bar` is the command line's progress adapter over the library's one protocol
(``featuremaps._progress.reporter``): a bar on a terminal, nothing in a pipe or a log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import click

from .._atomic import atomic_path
from .._outdir import MARKER, OutputFolderError, check_output_folder, foreign_entries, record
from .._progress import Progress, reporter

__all__ = [
    "count",
    "Prediction", "echo_predictions", "echo_top1", "mark_new_file", "output_folder", "progress_bar",
    "top_classes", "write_predictions",
]

#: One predicted class: ``(index, name, probability)``.
Prediction = tuple[int, str, float]


def output_folder(out_dir: str, create: bool = True) -> Path:
    """Check ``-o``: a new or empty folder, or one holding only what featuremaps wrote; then (``create``) make it.

    A folder holding anything featuremaps did not write (by its manifest, ``.featuremaps``) is refused with a
    usage error naming ``-o``. With ``create`` the folder is made and, when the command ends, what it holds
    is recorded in the manifest as ours (everything in it was checked to be ours; what the command adds is
    ours too).
    """
    try:
        out = check_output_folder(out_dir)
    except OutputFolderError as exc:
        raise click.BadParameter(str(exc), param_hint="'-o'") from None
    if not create:
        return out
    out.mkdir(parents=True, exist_ok=True)
    record(out)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lambda: record(out) if out.is_dir() else None)
    return out


def mark_new_file(out_file: str) -> Callable[[], None]:
    """For commands writing one file: once written, record it in its folder's manifest where that is ours.

    Returns the function to call after writing. A folder the write creates becomes ours; a folder
    featuremaps wrote before records the new file; a folder of the user's is left unmarked. (The default
    folder, featuremaps-out, then takes every command's output in turn.)
    """
    folder = Path(out_file).parent
    ours = not folder.exists() or ((folder / MARKER).is_file() and not foreign_entries(folder))

    def mark() -> None:
        if ours and folder.is_dir() and Path(out_file).is_file():
            record(folder, [Path(out_file).name])

    return mark


def top_classes(output: Any, preprocess: Any, k: int = 5) -> list[Prediction]:
    """The ``k`` most probable classes of the model's output (``[]`` when it is not a classification)."""
    from ..models import top_classes as top  # lazy: PyTorch stays out of `featuremaps --help`

    return top(output, getattr(preprocess, "card", None), k)


def echo_top1(top: Sequence[Prediction]) -> None:
    """Print the best class in one line (nothing for a model without class scores); its index once when unnamed.

    Example:
        >>> echo_top1([(281, "tabby", 0.5)]); echo_top1([(0, "class 0", 0.25)])
        top-1: tabby (class 281, p=0.500)
        top-1: class 0 (p=0.250)
    """
    if top:
        index, name, p = top[0]
        unnamed = name.strip() in ("", f"class {index}", str(index))
        click.echo(f"top-1: class {index} (p={p:.3f})" if unnamed else f"top-1: {name} (class {index}, p={p:.3f})")


def echo_predictions(top: Sequence[Prediction]) -> None:
    """Print the top classes as a table: probability, index, name."""
    for index, name, p in top:
        click.echo(f"{p:.4f}  {index:>5}  {'' if name == f'class {index}' else name}".rstrip())


def write_predictions(folder: Path, top: Sequence[Prediction]) -> Path | None:
    """Write ``folder/predictions.txt`` (``probability<TAB>index<TAB>name`` lines) atomically; ``None`` if no classes.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_predictions(Path(d), [(281, "tabby", 0.5)]).read_text()
        '0.5000\\t281\\ttabby\\n'
    """
    if not top:
        return None
    path = folder / "predictions.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{p:.4f}\t{i}\t{name}\n" for i, name, p in top), encoding="utf-8")
    return path


@contextlib.contextmanager
def progress_bar(unit: str = "", min_total: int = 0) -> Iterator[Progress]:
    """The command line's progress: a ``(stage, done, total)`` callable drawing a bar on stderr's terminal."""
    with reporter(True, unit=unit, min_total=min_total) as report:
        yield report


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (nouns with a plain ``s`` plural).

    Example:
        >>> count(1, "layer"), count(3, "layer"), count(0, "channel")
        ('1 layer', '3 layers', '0 channels')
    """
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
