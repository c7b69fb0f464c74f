"""``featuremaps atlas``: the top-k dataset examples of every channel, as a browsable folder.

A thin shell over :func:`featuremaps.atlas.build_atlas`. It works alone and
under ``torchrun`` (each process reads a shard; rank 0 writes the folder)::

    featuremaps atlas IMAGE_DIR --layers '_blocks.1?.*' --k 9 -o atlas/
    featuremaps atlas IMAGE_DIR --layers '_blocks.15.*' --synthesize --synth-steps 64 -o atlas/
    torchrun --nproc_per_node=4 -m featuremaps atlas IMAGE_DIR --layers ... -o atlas/
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .cli import _load, _output_folder, _parse_layers, model_options

__all__ = ["atlas_cmd"]


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print each warning as one clean ``Warning: ...`` line on stderr (not Python's two-line format)."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = str(message).strip().splitlines()
        click.echo(f"Warning: {text[0] if text else category.__name__}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _init_distributed(device: str | None, timeout: float = 600.0) -> tuple[bool, str | None]:
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


def _default_layers(model: Any, rank: int) -> Any:
    """The block outputs, said before the pass (every spatial layer when the model has no blocks)."""
    from .layers import block_names, is_leaf

    blocks = block_names(model)
    if rank == 0:  # said even with --quiet (which hides the progress bar only)
        if blocks:
            shown = ", ".join(blocks[:3]) + (f", ... {blocks[-1]}" if len(blocks) > 3 else "")
            click.echo(f"layers: the {len(blocks)} block outputs ({shown}); --layers chooses others", err=True)
        else:
            leaves = sum(1 for _, m in model.named_modules() if is_leaf(m))
            click.echo(f"layers: {type(model).__name__} has no numbered blocks: every spatial layer (up to "
                       f"{leaves} layers, one page and one patch sheet per channel); --layers chooses fewer",
                       err=True)
    return "blocks" if blocks else None


@contextmanager
def dataset_pass(device: str | None, timeout: float) -> Iterator[tuple[str | None, int]]:
    """The frame of a command that passes over a dataset, alone or under ``torchrun``.

    Warnings print as one line each; the torchrun process group is joined
    (with ``timeout``) and left again afterwards if this call created it.
    Yields the device for this process and its rank.
    """
    with _warnings_as_lines():
        created, device = _init_distributed(device, timeout)
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


@click.command("atlas")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@model_options
@click.option("--layers", "layer_patterns", multiple=True,
              help="Layers: names, globs ('_blocks.1?.*'), 're:REGEX', 'blocks' or 'all'; repeat or "
              "comma-separate. Default: 'blocks', the block outputs (one map per block, e.g. 16 on the default "
              "model), else every layer with a spatial output.")
@click.option("--k", "k", default=9, show_default=True, type=click.IntRange(min=1),
              help="Top examples kept per channel.")
@click.option("--score", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Rank images by the channel's spatial maximum or mean.")
@click.option("-o", "--out", "out_dir", default="atlas", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: new, empty, or one featuremaps wrote (checked before any work; written atomically, "
              "a previous atlas's files there are replaced).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per forward.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader worker processes for reading images.")
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Save the running state every this many images (per process).")
@click.option("--no-resume", is_flag=True, help="Start over instead of continuing from a checkpoint.")
@click.option("--patch-size", default=64, show_default=True, type=click.IntRange(min=4),
              help="Patch thumbnail size in pixels.")
@click.option("--receptive", type=click.Choice(["auto", "chain", "gradient", "none"]), default="auto",
              show_default=True,
              help="How patch sizes are found: from the module chain, by gradients, auto, or none (whole images).")
@click.option("--synthesize", is_flag=True,
              help="Also synthesize an image exciting each channel, shown next to its patches (slow; off by default).")
@click.option("--synth-steps", default=128, show_default=True, type=click.IntRange(min=1),
              help="Optimization steps per synthesized image.")
@click.option("--synth-size", default=96, show_default=True, type=click.IntRange(min=8),
              help="Synthesized image size in pixels.")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Under torchrun: seconds a process waits for the others before it fails naming the missing rank.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def atlas_cmd(
    image_dir: str, model_spec: str, weights: str | None, device: str | None, trust_pickle: bool,
    layer_patterns: tuple[str, ...], k: int, score: str, out_dir: str, batch_size: int, workers: int,
    checkpoint_every: int, no_resume: bool, patch_size: int, receptive: str, synthesize: bool, synth_steps: int,
    synth_size: int, timeout: float, quiet: bool,
) -> None:
    """Find the K images (and patches) of IMAGE_DIR that activate each channel most.

    Reads IMAGE_DIR recursively with the model's preprocessing (unreadable
    images are skipped and listed), keeps per channel the top K images and
    dataset statistics (mean, std, fraction active, max), and writes OUT:
    index.html, one page per layer, patch thumbnails, atlas.json and
    atlas.safetensors (load it with featuremaps.atlas.load_atlas). An
    interrupted run continues where it stopped when re-run with the same
    arguments. Under torchrun each process reads its share of the images.
    With --synthesize each channel also gets an image optimized to excite it
    (about --synth-steps forward and backward passes per batch of channels;
    under torchrun the processes share the channels).

    Example:

    \b
        featuremaps atlas photos/ --layers '_blocks.1?._project_conv' --k 9 -o atlas/
        featuremaps atlas photos/ --layers '_blocks.15.*' --synthesize -o atlas/
        torchrun --nproc_per_node=4 -m featuremaps atlas photos/ --layers ... -o atlas/
    """
    from .atlas import build_atlas

    _output_folder(out_dir, create=False)  # before any work: a folder of the user's is refused here
    with dataset_pass(device, timeout) as (device, rank):
        model, preprocess = _load(model_spec, weights, device, trust_pickle)
        layers = _parse_layers(layer_patterns) or _default_layers(model, rank)
        t0 = time.perf_counter()
        atlas = build_atlas(
            model, image_dir, preprocess=preprocess, layers=layers, k=k, score=score,
            batch_size=batch_size, num_workers=workers, checkpoint_every=checkpoint_every, out=out_dir,
            resume=not no_resume, progress=not quiet, patch_size=patch_size, receptive=receptive,
            synthesize=synthesize, synth_steps=synth_steps, synth_size=synth_size, timeout=timeout,
        )
        seconds = time.perf_counter() - t0
        if rank == 0:
            channels = sum(atlas.layer(name).channels for name in atlas.layers())
            rate = atlas.num_images / seconds if seconds > 0 else 0.0
            click.echo(
                f"atlas of {atlas.num_images} images ({rate:.1f} images/s): {len(atlas.layers())} layers, "
                f"{channels} channels, top {k} by {score}"
                + (f", synthesized images ({synth_steps} steps)" if atlas.synthesis else "")
            )
            echo_skipped(atlas.skipped, "atlas.json")
            click.echo(f"wrote {os.path.join(out_dir, 'index.html')}")
