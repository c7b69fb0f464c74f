"""The frame of the commands that pass over a dataset (atlas, concepts), alone or under ``torchrun``.

:func:`dataset_options` adds the options both share (batch size, workers, patches, timeout, quiet);
:func:`dataset_pass` prints warnings as one line each, joins the torchrun process group (and leaves it
again); :func:`echo_skipped` lists the unreadable images a pass skipped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

__all__ = ["dataset_options", "checkpoint_options", "dataset_pass", "echo_skipped", "init_distributed"]


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print each warning as one clean ``Warning: ...`` line on stderr (not Python's two-line format)."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = str(message).strip().splitlines()
        click.echo(f"Warning: {text[0] if text else category.__name__}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def init_distributed(device: str | None, timeout: float = 600.0) -> tuple[bool, str | None]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Its collectives (and joining itself) wait at most ``timeout`` seconds for
    a rank. Returns whether this call created the group, and the device for
    this rank.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, device
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False, device
    cuda = device is not None and device.startswith("cuda") and torch.cuda.is_available()
    if cuda and device == "cuda":
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", "?")
            raise click.UsageError(
                f"torchrun started {per_node} processes on this machine but it has {gpus} GPU(s); NCCL needs one "
                f"GPU per process: use --nproc_per_node={gpus}"
            )
        device = f"cuda:{local_rank}"
    if cuda:
        torch.cuda.set_device(torch.device(device or "cuda"))
    from datetime import timedelta

    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    except (RuntimeError, TimeoutError) as exc:  # the store's DistStoreError when a rank does not join in time
        first = str(exc).strip().splitlines()
        raise click.ClickException(
            f"could not join the torchrun process group within {timeout:g} s ({first[0] if first else exc!r}); "
            "check that every process started, or raise --timeout"
        ) from None
    return True, device


@contextmanager
def dataset_pass(device: str | None, timeout: float) -> Iterator[tuple[str | None, int]]:
    """The frame of a command that passes over a dataset, alone or under ``torchrun``.

    Warnings print as one line each; the torchrun process group is joined
    (with ``timeout``) and left again afterwards if this call created it.
    Yields the device for this process and its rank.
    """
    with _warnings_as_lines():
        created, device = init_distributed(device, timeout)
        try:
            import torch.distributed as dist

            yield device, dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        finally:
            if created:
                import torch.distributed as dist

                dist.destroy_process_group()


def echo_skipped(skipped: list[tuple[str, str]], listed_in: str) -> None:
    """List the unreadable images a pass skipped (the first 20, then where the rest are listed)."""
    if not skipped:
        return
    n = len(skipped)
    click.echo(f"skipped {n} unreadable image{'' if n == 1 else 's'}:", err=True)
    for name, reason in skipped[:20]:
        click.echo(f"  {name}: {reason}", err=True)
    if n > 20:
        click.echo(f"  ... and {n - 20} more (listed in {listed_in})", err=True)


def dataset_options(f: Any) -> Any:
    """The options of a dataset pass: batch size, reader workers, patch thumbnails, torchrun timeout, quiet."""
    f = click.option("--quiet", is_flag=True, help="No progress bar.")(f)
    f = click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Under torchrun: seconds a process waits for the others before it fails naming the "
                     "missing rank.")(f)
    f = click.option("--receptive", type=click.Choice(["auto", "chain", "gradient", "none"]), default="auto",
                     show_default=True, help="How patch sizes are found: from the module chain, by gradients, "
                     "auto, or none (whole images).")(f)
    f = click.option("--patch-size", default=64, show_default=True, type=click.IntRange(min=4),
                     help="Patch thumbnail size in pixels.")(f)
    f = click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
                     help="DataLoader worker processes for reading images.")(f)
    f = click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Images per forward.")(f)
    return f


def checkpoint_options(f: Any) -> Any:
    """The checkpoint options of a dataset pass: ``--checkpoint-every N`` and ``--no-resume``."""
    f = click.option("--no-resume", is_flag=True, help="Start over instead of continuing from a checkpoint.")(f)
    f = click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(min=1),
                     help="Save the pass's state every this many images (per process), next to the output "
                     "folder; an interrupted run continues from it.")(f)
    return f
