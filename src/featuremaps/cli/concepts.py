"""``featuremaps concepts``: the concepts a layer's activations are made of, as a browsable folder.

A thin shell over :func:`featuremaps.discover_concepts`. It works alone and
under ``torchrun`` (each process reads a shard; rank 0 writes the folder)::

    featuremaps concepts IMAGE_DIR --layer _act_head --n 10 -o concepts/
    torchrun --nproc_per_node=4 -m featuremaps concepts IMAGE_DIR --layer _act_head --n-concepts 10 -o concepts/
"""

from __future__ import annotations

import os
import time

import click

from .command import command
from .dataset import checkpoint_options, dataset_options, dataset_pass, echo_skipped
from .options import ModelOptions, model_options, out_option, pass_model
from .outputs import output_folder

__all__ = ["concepts_cmd"]


@command("concepts")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@model_options(image=False)
@click.option("--layer", required=True, help="The layer to find concepts in (one name; see 'featuremaps layers').")
@click.option("--n", "--n-concepts", "n_concepts", default=10, show_default=True, type=click.IntRange(min=1),
              help="How many concepts (under torchrun spell it --n-concepts: torchrun takes --n for its own).")
@click.option("--k", "top_k", default=9, show_default=True, type=click.IntRange(min=1),
              help="Top examples kept per concept.")
@out_option("concepts", "Output folder: new, empty, or one featuremaps wrote (checked before any work; written "
            "atomically).")
@click.option("--sample-size", default=None, type=click.IntRange(min=1),
              help="Positions kept for the factorization [default: as many as fit in 64 MiB].")
@dataset_options
@checkpoint_options
@pass_model
def concepts_cmd(
    model: ModelOptions, image_dir: str, layer: str, n_concepts: int, top_k: int, out_dir: str,
    sample_size: int | None, batch_size: int, workers: int, patch_size: int, receptive: str, timeout: float,
    quiet: bool, checkpoint_every: int, no_resume: bool,
) -> None:
    """Find the N concepts that LAYER's activations over IMAGE_DIR are made of.

    A concept is a non-negative mix of the layer's channels (non-negative
    matrix factorization of the activations at every position, as in
    CRAFT). Writes OUT: index.html (per concept its top patches and
    channels), atlas/ (its top examples), concepts.json and
    concepts.safetensors (load them with featuremaps.load_concepts). An
    interrupted run continues where its first pass stopped when re-run with
    the same arguments (checkpoints next to OUT; --no-resume starts over).

    Example:

    \b
        featuremaps concepts photos/ --layer _act_head --n 10 -o concepts/
    """
    from ..concepts import discover_concepts  # lazy: PyTorch stays out of `featuremaps --help`

    output_folder(out_dir, create=False)  # before any work: a folder of the user's is refused here
    with dataset_pass(model.device, timeout) as (device, rank):
        net, preprocess = model.load(device)
        t0 = time.perf_counter()
        concepts = discover_concepts(
            net, image_dir, layer, n_concepts, preprocess=preprocess, top_k=top_k, sample_size=sample_size,
            batch_size=batch_size, num_workers=workers, receptive=receptive, progress=not quiet, out=out_dir,
            patch_size=patch_size, timeout=timeout, checkpoint_every=checkpoint_every, resume=not no_resume,
        )
        seconds = time.perf_counter() - t0
        if rank == 0:
            click.echo(
                f"{concepts.n_concepts} concepts in {concepts.layer} from {concepts.num_images} images "
                f"({seconds:.1f} s); they explain {max(0.0, 1 - concepts.relative_error ** 2):.0%} of the "
                "sampled activations (squared norm)"
            )
            if concepts.negative_share > 0.05:
                click.echo(f"Warning: {concepts.negative_share:.0%} of the layer's activation mass is negative "
                           "and was left out; the activation after it may fit better", err=True)
            echo_skipped(concepts.skipped, "concepts.json")
            click.echo(f"wrote {os.path.join(out_dir, 'index.html')}")
