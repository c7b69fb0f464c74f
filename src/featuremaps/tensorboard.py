"""TensorBoard logging of captured maps (``torch.utils.tensorboard``, optional)."""

from __future__ import annotations

from typing import Any

from .errors import FeatureMapsError
from .maps import FeatureMaps
from .pictures import render_map

__all__ = ["log_to_tensorboard"]


def log_to_tensorboard(
    writer: Any,
    maps: FeatureMaps,
    step: int,
    *,
    prefix: str = "featuremaps",
    grids: bool = True,
    histograms: bool = True,
    stats: bool = True,
    channels: int | None = 64,
    order: str | None = "max",
    norm: str = "auto",
) -> int:
    """Log channel grids, activation histograms and statistics of every map.

    For each layer ``name`` this adds, at ``step``:

    * an image ``{prefix}/grid/{name}`` (the channel grid of sample 0; at
      most ``channels`` channels, the top ones by ``order``);
    * a histogram ``{prefix}/hist/{name}`` of the finite activations;
    * scalars ``{prefix}/{stat}/{name}`` for ``mean``, ``std``, ``zeros``
      (fraction of zeros) and ``dead`` (dead channels).

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with
            its ``add_image``/``add_histogram``/``add_scalar`` methods).
        maps: the captured maps.
        step: the global step.
        prefix: the tag prefix.
        grids, histograms, stats: what to log.
        channels: channels per grid (``None``: all).
        order: how to rank channels for ``channels``.
        norm: the grid normalization mode.

    Returns:
        The number of layers logged.

    Example:
        >>> import tempfile, torch, featuremaps as fm
        >>> from torch import nn
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.rand(1, 3, 8, 8))
        >>> with SummaryWriter(tempfile.mkdtemp()) as writer:
        ...     fm.log_to_tensorboard(writer, maps, step=0)
        1
    """
    missing = [m for m in ("add_image", "add_histogram", "add_scalar") if not hasattr(writer, m)]
    if missing:
        raise FeatureMapsError(
            f"writer {type(writer).__name__} lacks {', '.join(missing)}; pass a "
            "torch.utils.tensorboard.SummaryWriter (pip install tensorboard)"
        )
    logged = 0
    for name, lm in maps.items():
        t = lm.tensor
        if t.device.type == "meta" or t.ndim < 2:
            continue
        if grids:
            kw: dict[str, Any] = {"norm": norm}
            if t.ndim in (4, 5) or (t.ndim == 3):
                kw.update(channels=channels if channels and (lm.channels or 0) > channels else None,
                          order=order if channels and (lm.channels or 0) > channels else None)
            image = render_map(lm, **kw).array
            writer.add_image(f"{prefix}/grid/{name}", image, step, dataformats="HWC")
        if histograms:
            values = t.detach().float().flatten()
            finite = values[values.isfinite()].cpu()
            if finite.numel():
                writer.add_histogram(f"{prefix}/hist/{name}", finite, step)
        if stats:
            s = lm.stats()
            for key, value in (("mean", s.mean), ("std", s.std), ("zeros", s.zero_fraction), ("dead", s.num_dead)):
                writer.add_scalar(f"{prefix}/{key}/{name}", value, step)
        logged += 1
    return logged
