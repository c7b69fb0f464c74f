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
from typing import Any

import click

from .command import command
from .dataset import dataset_options, dataset_pass, echo_skipped
from .options import ModelOptions, layers_option, model_options, out_option, parse_layers, pass_model
from .outputs import count, output_folder

__all__ = ["PassClock", "atlas_cmd"]


class PassClock:
    """Times a call's dataset pass from its ``"atlas"`` progress updates, apart from what follows it.

    The pass runs from the first update (before the first batch: the images
    a resumed run already has) to the last; its rate counts the images read
    in between, so writing patches and pages does not pass for a slow pass.

    Example:
        >>> clock = PassClock(start=0.0)
        >>> clock("atlas", 0, 64, now=1.0); clock("atlas", 64, 64, now=9.0)
        >>> clock.summary("pages", now=12.0)
        '12.0 s (the pass 8.0 s, 8.0 images/s; then pages 3.0 s)'
        >>> resumed = PassClock(start=0.0)
        >>> resumed("atlas", 48, 64, now=1.0); resumed("atlas", 64, 64, now=3.0)
        >>> resumed.summary("pages", now=4.0)
        '4.0 s (the pass 2.0 s, 8.0 images/s, 48 images from the checkpoint; then pages 1.0 s)'
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def __call__(self, stage: str, done: int, total: int | None, now: float | None = None) -> None:
        if stage == "atlas":
            self.last = (time.perf_counter() if now is None else now, done)
            self.first = self.first or self.last

    def summary(self, rest: str, now: float | None = None) -> str:
        """The whole time, the pass's time and rate, and the time of ``rest`` (what came after the pass)."""
        end = time.perf_counter() if now is None else now
        whole = f"{end - self.start:.1f} s"
        if self.first is None or self.last is None:
            return whole
        seconds, read = self.last[0] - self.first[0], self.last[1] - self.first[1]
        rate = f", {read / seconds:.1f} images/s" if read > 0 and seconds > 0 else ""
        resumed = f", {count(self.first[1], 'image')} from the checkpoint" if self.first[1] else ""
        return f"{whole} (the pass {seconds:.1f} s{rate}{resumed}; then {rest} {end - self.last[0]:.1f} s)"


def _default_layers(model: Any, rank: int) -> Any:
    """The block outputs, said before the pass (every spatial layer when the model has no blocks)."""
    from ..layers import block_names, is_leaf  # lazy: PyTorch stays out of `featuremaps --help`

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


@command("atlas")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@model_options(image=False)
@layers_option("Layers: names, globs ('_blocks.1?.*'), 're:REGEX', 'blocks' or 'all'; repeat or "
               "comma-separate. Default: 'blocks', the block outputs (one map per block, e.g. 16 on the default "
               "model), else every layer with a spatial output.")
@click.option("--k", "k", default=9, show_default=True, type=click.IntRange(min=1),
              help="Top examples kept per channel.")
@click.option("--score", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Rank images by the channel's spatial maximum or mean.")
@out_option("atlas", "Output folder: new, empty, or one featuremaps wrote (checked before any work; written "
            "atomically, a previous atlas's files there are replaced).")
@dataset_options
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Save the running state every this many images (per process).")
@click.option("--no-resume", is_flag=True, help="Start over instead of continuing from a checkpoint.")
@click.option("--synthesize", is_flag=True,
              help="Also synthesize an image exciting each channel, shown next to its patches (slow; off by default).")
@click.option("--synth-steps", default=128, show_default=True, type=click.IntRange(min=1),
              help="Optimization steps per synthesized image.")
@click.option("--synth-size", default=96, show_default=True, type=click.IntRange(min=8),
              help="Synthesized image size in pixels.")
@pass_model
def atlas_cmd(
    model: ModelOptions, image_dir: str, layer_patterns: tuple[str, ...], k: int, score: str, out_dir: str,
    batch_size: int, workers: int, patch_size: int, receptive: str, timeout: float, quiet: bool,
    checkpoint_every: int, no_resume: bool, synthesize: bool, synth_steps: int, synth_size: int,
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
    from .._progress import Watch  # lazy: as below
    from ..atlas import build_atlas  # lazy: PyTorch stays out of `featuremaps --help`

    output_folder(out_dir, create=False)  # before any work: a folder of the user's is refused here
    with dataset_pass(model.device, timeout) as (device, rank):
        net, preprocess = model.load(device)
        layers = parse_layers(layer_patterns) or _default_layers(net, rank)
        clock = PassClock()
        atlas = build_atlas(
            net, image_dir, preprocess=preprocess, layers=layers, k=k, score=score,
            batch_size=batch_size, num_workers=workers, checkpoint_every=checkpoint_every, out=out_dir,
            resume=not no_resume, progress=Watch(clock, bar=not quiet), patch_size=patch_size,
            receptive=receptive, synthesize=synthesize, synth_steps=synth_steps, synth_size=synth_size,
            timeout=timeout,
        )
        if rank == 0:
            channels = sum(atlas.layer(name).channels for name in atlas.layers())
            rest = "synthesis, patches and pages" if atlas.synthesis else "patches and pages"
            click.echo(
                f"atlas of {count(atlas.num_images, 'image')} in {clock.summary(rest)}: "
                f"{count(len(atlas.layers()), 'layer')}, {count(channels, 'channel')}, top {k} by {score}"
                + (f", synthesized images ({synth_steps} steps)" if atlas.synthesis else "")
            )
            echo_skipped(atlas.skipped, "atlas.json")
            click.echo(f"wrote {os.path.join(out_dir, 'index.html')}")
