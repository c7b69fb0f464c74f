"""The atlas's link to feature visualization: an image synthesized for every channel, shared out among ranks.

:func:`synthesize_channels` runs :func:`featuremaps.synthesize` over the
atlas layers, in batches of channels; under ``torch.distributed`` each rank
takes every ``world``-th channel and the images are gathered so that every
rank ends with all of them. A layer the synthesis cannot use is left out
whole (a layer is complete or absent), with one warning.
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._progress import Progress, ProgressArg, reporter
from ..datapass import DEFAULT_TIMEOUT, check_in, check_timeout, comm_device, gather_json, rank_world
from ..errors import FeatureMapsError
from ..models import resolve
from ..synthesis import Channel, SynthesisError, synthesize

if TYPE_CHECKING:
    from .atlas import Atlas

__all__ = ["check_synthesis", "synthesize_channels"]


def check_synthesis(steps: Any, size: Any) -> tuple[int, int]:
    """Check the synthesis options (steps >= 1, size >= 8 pixels); returns them as ints.

    Example:
        >>> check_synthesis(32, 96)
        (32, 96)
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise FeatureMapsError(f"synth_steps={steps!r} must be an int >= 1: the optimization steps per image")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise FeatureMapsError(f"synth_size={size!r} must be an int >= 8: the synthesized image size in pixels")
    return int(steps), int(size)


def synthesize_channels(
    atlas: Atlas, model: Any, *, steps: int, size: int, preprocess: Any, progress: ProgressArg, timeout: float | None,
) -> dict[tuple[str, int], bytes]:
    """Every channel's synthesized image as JPEG bytes, ``(layer, channel) -> bytes`` (see :meth:`Atlas.synthesize`).

    Progress is reported (rank 0) as the ``"synthesis"`` stage, in steps over all layers.
    """
    model, preprocess = resolve(model, preprocess).known()
    steps, size = check_synthesis(steps, size)
    wait = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
    if atlas.input_size is None:
        raise FeatureMapsError(
            "this atlas was not built from images (N, C, H, W), so its channels cannot be synthesized; "
            "synthesis needs a model that takes RGB images"
        )
    rank, world = rank_world()
    images: dict[tuple[str, int], bytes] = {}
    failed: dict[str, str] = {}
    error: str | None = None
    try:
        with reporter(progress if rank == 0 else False, unit="steps") as report:
            _synthesize_shares(atlas, model, steps, size, preprocess, report, images, failed)
    except Exception as exc:  # noqa: BLE001 - under torch.distributed every rank must reach the gather
        if world == 1:
            raise
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if world > 1:
        check_in("the end of the synthesis", wait)
        images, failed, error = _gather_synthesized(images, failed, error, world)
        if error is not None:
            raise FeatureMapsError(f"synthesizing the atlas channels failed on a rank: {error}")
    for name in failed:  # a layer is complete or absent
        images = {key: v for key, v in images.items() if key[0] != name}
    if failed:
        listed = "; ".join(f"{name!r}: {msg}" for name, msg in sorted(failed.items())[:3])
        warnings.warn(f"no images synthesized for {len(failed)} layer(s): {listed}", UserWarning, stacklevel=3)
    return images


def _synthesize_shares(
    atlas: Atlas, model: Any, steps: int, size: int, preprocess: Any, report: Progress,
    images: dict[tuple[str, int], bytes], failed: dict[str, str],
) -> None:
    """This rank's share of every layer's channels, into ``images`` (and the layers that failed into ``failed``)."""
    rank, world = rank_world()
    shares = [(layer, list(range(rank, layer.channels, world))) for layer in atlas.layer_table]
    shares = [(layer, chans) for layer, chans in shares if chans]
    total = steps * len(shares)
    for i, (layer, chans) in enumerate(shares):
        def layer_progress(stage: str, done: int, of: int | None, before: int = i * steps) -> None:
            report("synthesis", before + (done * steps // of if of else 0), total)

        try:
            result = synthesize(model, [Channel(layer.name, c) for c in chans], steps=steps, size=size,
                                preprocess=preprocess, progress=layer_progress, return_result=True)
        except SynthesisError as exc:
            failed[layer.name] = str(exc).splitlines()[0]
        else:
            if result.interrupted:  # synthesize returns on Ctrl-C; stop here, not at every layer
                raise KeyboardInterrupt
            for c, img in zip(chans, result.images):
                images[(layer.name, c)] = _jpeg(img)
        report("synthesis", (i + 1) * steps, total)


def _jpeg(img: Any) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _gather_synthesized(
    images: dict[tuple[str, int], bytes], failed: dict[str, str], error: str | None, world: int
) -> tuple[dict[tuple[str, int], bytes], dict[str, str], str | None]:
    """Every rank's synthesized images, failed layers and error, on every rank."""
    device = comm_device(torch.device("cpu"))
    parts = gather_json(
        {"images": [[name, c, base64.b64encode(data).decode("ascii")] for (name, c), data in images.items()],
         "failed": failed, "error": error},
        device, world,
    )
    merged: dict[tuple[str, int], bytes] = {}
    all_failed: dict[str, str] = {}
    first_error = None
    for part in parts:
        for name, c, text in part["images"]:
            merged[(str(name), int(c))] = base64.b64decode(text)
        all_failed.update(part["failed"])
        first_error = first_error or part["error"]
    return merged, all_failed, first_error
