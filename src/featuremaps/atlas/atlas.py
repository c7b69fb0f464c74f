"""The :class:`Atlas`: per-channel top examples and statistics, with its queries, patches and synthesized images.

An atlas folder holds:

* ``atlas.json`` - metadata: the model, k, the score, the image names, the
  skipped images, and per layer its type, channels, map size, stride and
  receptive field;
* ``atlas.safetensors`` - per layer ``{layer}/index``, ``/score``, ``/y``,
  ``/x`` (``(channels, k)``, best first; index ``-1`` marks an empty slot)
  and ``/mean``, ``/std``, ``/active_fraction``, ``/max``, ``/count``,
  ``/excluded`` (``(channels,)``);
* ``patches/NNN/C.png`` (or ``.jpg``) - for channel ``C`` of layer number
  ``NNN``, the receptive-field crops around the argmax of its top examples,
  in a grid (PNG for small fields shown enlarged, JPEG for photo-like crops);
* ``synth/NNN/C.jpg`` - optionally, an image synthesized to excite channel
  ``C`` of layer ``NNN`` (:meth:`Atlas.synthesize`; ``atlas.json`` then
  records the steps and size under ``synthesis``);
* ``index.html`` and ``layers/NNN.html`` - the pages (see :mod:`.html`).

* ``.featuremaps`` - the manifest: every file written, with its SHA-256
  (see :mod:`featuremaps._outdir`: only such a folder is ever replaced).

The folder is written into a temporary sibling and renamed into place, so it
is complete or absent, never half-written. Everything is deterministic: the
same atlas always gives the same bytes.

This module holds the atlas's state and queries; the work is done by its
neighbours: :mod:`.folder` (writing and reading the folder), :mod:`.patches`
(crops and sheets), :mod:`.pages` (the pages' data), :mod:`.synth`
(synthesized images) and :mod:`.build` (the dataset pass that makes one).
"""

from __future__ import annotations

import difflib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._progress import ProgressArg
from ..errors import FeatureMapsError, LayerNotFoundError
from .data import FORMAT, AtlasLayer, ImageViewer, LayerData
from .folder import OWNED, read_folder, save_folder
from .patches import crop
from .receptive import ReceptiveField
from .stats import ChannelStats
from .synth import check_synthesis, synthesize_channels
from .topk import TopExample

__all__ = ["Atlas", "AtlasLayer", "load_atlas", "FORMAT", "OWNED", "check_synthesis"]


@dataclass(eq=False)
class Atlas:
    """Top-k activating dataset examples and statistics for every channel of some layers.

    Built by :func:`~featuremaps.atlas.build_atlas`, read back by :func:`load_atlas`.

    Attributes:
        k: examples kept per channel.
        score: ``"max"`` (spatial maximum) or ``"mean"`` (spatial mean).
        num_images: how many images were seen.
        images: the image names (paths relative to ``root``) by dataset
            index, or ``None`` for datasets without names.
        skipped: ``(name, reason)`` of every image that could not be read.
        model: the model's name.
        input_size: ``(H, W)`` of the model input, when known.
        root: the image folder, for folder datasets.
        synthesis: ``{"steps": ..., "size": ...}`` when the channels have
            synthesized images (:meth:`synthesize`), else ``None``.
        unit: what one channel of the atlas is, in its pages' words
            (``"channel"``; ``"concept"`` for the atlas of concepts).

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> atlas = fm.build_atlas(net, TensorDataset(torch.rand(6, 3, 16, 16)), layers="1", k=2, progress=False)
        >>> atlas.layers(), len(atlas.top_examples("1", channel=0))
        (['1'], 2)
    """

    k: int
    score: str
    num_images: int
    layer_table: list[AtlasLayer]
    data: dict[str, LayerData] = field(repr=False)
    images: list[str] | None = field(default=None, repr=False)
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    model: str = ""
    input_size: tuple[int, int] | None = None
    root: str | None = None
    synthesis: dict[str, int] | None = None
    unit: str = "channel"
    _viewer: ImageViewer | None = field(default=None, repr=False, compare=False)
    _synth: dict[tuple[str, int], bytes] = field(default_factory=dict, repr=False, compare=False)
    _origin: Path | None = field(default=None, repr=False, compare=False)

    # -- queries ------------------------------------------------------------
    def layers(self) -> list[str]:
        """The layer names, in the order the model runs them.

        Example:
            >>> _tiny_atlas().layers()
            ['conv']
        """
        return [layer.name for layer in self.layer_table]

    def layer(self, name: str) -> AtlasLayer:
        """The :class:`AtlasLayer` called ``name``.

        Example:
            >>> _tiny_atlas().layer("conv").channels
            2
        """
        for layer in self.layer_table:
            if layer.name == name:
                return layer
        close = difflib.get_close_matches(name, self.layers(), n=3)
        if close:
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?"
        else:
            hint = f"; it has {', '.join(self.layers()[:8])}"
        raise LayerNotFoundError(f"layer {name!r} is not in this atlas{hint}")

    def channels(self, layer: str) -> range:
        """The channel numbers of ``layer``.

        Example:
            >>> list(_tiny_atlas().channels("conv"))
            [0, 1]
        """
        return range(self.layer(layer).channels)

    def top_examples(self, layer: str, channel: int) -> list[TopExample]:
        """The top examples of one channel, best first: ``[(index, score, (y, x)), ...]``.

        ``(y, x)`` is the position of the channel's maximum in the layer's map.
        Equal scores are ordered by dataset index.

        Example:
            >>> _tiny_atlas().top_examples("conv", 1)
            [TopExample(index=0, score=2.0, position=(1, 0))]
        """
        d = self.data[self.layer(layer).name]
        c = self._channel(layer, channel)
        return [
            TopExample(int(i), float(s), (int(y), int(x)))
            for i, s, y, x in zip(d.index[c], d.score[c], d.y[c], d.x[c]) if i >= 0
        ]

    def stats(self, layer: str) -> ChannelStats:
        """Per-channel dataset statistics of ``layer`` (mean, std, active fraction, max).

        Example:
            >>> _tiny_atlas().stats("conv").max.tolist()
            [1.0, 2.0]
        """
        return self.data[self.layer(layer).name].stats

    def image_name(self, index: int) -> str:
        """The name of dataset example ``index`` (its path for folders, else ``#index``).

        Example:
            >>> _tiny_atlas().image_name(0)
            'a.png'
        """
        if self.images is not None and 0 <= index < len(self.images):
            return self.images[index]
        return f"#{index}"

    def _channel(self, layer: str, channel: int) -> int:
        n = self.layer(layer).channels
        c = int(channel)
        if not 0 <= c < n:
            raise FeatureMapsError(f"channel {channel} is out of range for layer {layer!r}; it has channels 0..{n - 1}")
        return c

    # -- patches ------------------------------------------------------------
    def patch_box(self, layer: str, position: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """The input box ``(top, left, bottom, right)`` a map position sees (``None``: the whole input).

        Example:
            >>> _tiny_atlas().patch_box("conv", (1, 0))
            (1, 0, 2, 1)
        """
        rf = self.layer(layer).receptive_field
        if rf is None:
            return None
        if rf.method == "global":
            if self.input_size is None:
                return None
            return 0, 0, self.input_size[0], self.input_size[1]
        return rf.box(int(position[0]), int(position[1]))

    def patch(self, layer: str, channel: int, rank: int = 0, *, size: int | None = None) -> Any:
        """The receptive-field crop of the ``rank``-th top example of a channel, as a PIL image.

        The crop is centred on the channel's maximum; parts of the field that
        fall outside the image are gray (a field as large as the image, in
        one direction, shows the whole image in that direction). Needs the images (an atlas built in
        this session, or loaded while its image folder still exists).

        Args:
            layer: the layer.
            channel: the channel.
            rank: 0 for the best example.
            size: resize the crop to ``size`` x ``size`` pixels.

        Example:
            >>> _tiny_atlas().patch("conv", 1).size
            (1, 1)
        """
        examples = self.top_examples(layer, channel)
        if not 0 <= rank < len(examples):
            raise FeatureMapsError(
                f"rank {rank} is out of range: channel {channel} of {layer!r} has {len(examples)} examples"
            )
        ex = examples[rank]
        view = self._view(ex.index)
        if view is None:
            raise FeatureMapsError(
                f"the images of this atlas are not available (built from {self.root or 'a dataset'!s}); "
                "build the atlas again or keep the image folder where it was"
            )
        return crop(view, self.patch_box(layer, ex.position), size)

    def _view(self, index: int) -> Any:
        if self._viewer is None:
            return None
        return self._viewer(index)

    def channel_href(self, layer: str, channel: int) -> str:
        """The page of one channel, relative to the atlas folder (for links from the report).

        Example:
            >>> _tiny_atlas().channel_href("conv", 1)
            'layers/000.html#c1'
        """
        i = self.layers().index(self.layer(layer).name)
        return f"layers/{i:03d}.html#c{self._channel(layer, channel)}"

    # -- synthesized images -------------------------------------------------
    def synthesize(
        self,
        model: Any,
        *,
        steps: int = 128,
        size: int = 96,
        preprocess: Any = None,
        progress: ProgressArg = False,
        timeout: float | None = None,
    ) -> None:
        """Synthesize, for every channel of the atlas layers, an image that excites it.

        Each image is optimized to maximize the channel's mean activation
        (:func:`featuremaps.synthesize`, in batches of channels); it is kept
        with the atlas (as JPEG), shown in the channel's card and written by
        :meth:`save` as ``synth/NNN/C.jpg``. It costs about ``steps`` forward
        and backward passes per batch of channels, so it is off unless asked
        for. Under ``torch.distributed`` every rank synthesizes a share of the
        channels and all ranks end with every image. A layer the synthesis
        cannot use (e.g. one that does not run on a ``size`` x ``size``
        image) is skipped with a warning.

        Args:
            model: the model the atlas was built from (an ``nn.Module`` or a
                :class:`~featuremaps.LoadedModel`), taking RGB images.
            steps: optimization steps per image.
            size: image size in pixels.
            preprocess: the model's preprocessing (its mean and std
                normalize the images; default: the ImageNet ones).
            progress: ``True`` for a progress bar, ``False`` for none, or a
                callable ``progress(stage, done, total)`` (the ``"synthesis"``
                stage, in optimization steps; rank 0 only).
            timeout: under ``torch.distributed``, the seconds a rank waits
                for the others to finish their share (default: 10 minutes).

        Raises:
            FeatureMapsError: bad ``steps`` or ``size``; an atlas whose model
                does not take images; a rank that does not finish its share
                within ``timeout`` (a ``DistributedTimeoutError`` naming it).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from featuremaps.atlas import build_atlas
            >>> net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
            >>> atlas = build_atlas(net, torch.rand(4, 3, 16, 16), layers="1", k=1, progress=False)
            >>> atlas.synthesize(net, steps=2, size=16)
            >>> atlas.synthesized("1", 1).size, atlas.synthesis
            ((16, 16), {'steps': 2, 'size': 16})
        """
        steps, size = check_synthesis(steps, size)
        self._synth = synthesize_channels(self, model, steps=steps, size=size, preprocess=preprocess,
                                          progress=progress, timeout=timeout)
        self.synthesis = {"steps": steps, "size": size}

    def synthesized(self, layer: str, channel: int) -> Any:
        """The image synthesized to excite a channel (a PIL image), or ``None`` if there is none.

        Example:
            >>> atlas = _tiny_atlas()
            >>> atlas.synthesized("conv", 0) is None
            True
        """
        data = self._synth.get((self.layer(layer).name, self._channel(layer, channel)))
        if data is None:
            return None
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    # -- saving -------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, patch_size: int = 64, patches: bool = True) -> Path:
        """Write the data, patch thumbnails and HTML pages into ``directory``, atomically.

        Everything is written into a temporary sibling folder which then
        replaces ``directory`` in one rename. An existing ``directory`` must
        be empty or hold only files featuremaps wrote (by its manifest,
        ``.featuremaps``; anything else is refused before writing). Of the
        previous folder only the atlas's own entries (:data:`OWNED`) are
        replaced, and a file is deleted only if the manifest lists it with
        the bytes it has; other featuremaps output there is kept.

        Args:
            directory: the atlas folder.
            patch_size: thumbnail size in pixels.
            patches: write patch thumbnails (needs the images).

        Returns:
            The folder.

        Example:
            >>> import tempfile, pathlib
            >>> out = _tiny_atlas().save(pathlib.Path(tempfile.mkdtemp()) / "atlas")
            >>> sorted(p.name for p in out.iterdir())
            ['.featuremaps', 'atlas.json', 'atlas.safetensors', 'index.html', 'layers', 'patches']

        With synthesized images (:meth:`synthesize`) there is also ``synth/``.
        """
        return save_folder(self, directory, patch_size, patches)

    def __repr__(self) -> str:
        return (
            f"Atlas(model={self.model!r}, layers={len(self.layer_table)}, "
            f"channels={sum(la.channels for la in self.layer_table)}, k={self.k}, score={self.score!r}, "
            f"images={self.num_images}, skipped={len(self.skipped)})"
        )


def load_atlas(directory: str | os.PathLike[str]) -> Atlas:
    """Read an atlas folder written by :meth:`Atlas.save` (also by ``torchrun``; no pickle).

    Patches can be re-made (``atlas.patch(...)``) while the image folder it
    was built from still exists.

    Example:
        >>> import tempfile, pathlib
        >>> folder = _tiny_atlas().save(pathlib.Path(tempfile.mkdtemp()) / "atlas")
        >>> load_atlas(folder).top_examples("conv", 1)
        [TopExample(index=0, score=2.0, position=(1, 0))]
    """
    fields, synthesis, synth = read_folder(directory)
    atlas = Atlas(**fields)
    if synthesis:
        atlas.synthesis = synthesis
        atlas._synth = synth
    atlas._origin = Path(directory).resolve()
    return atlas


def _tiny_atlas() -> Atlas:
    """A two-channel atlas for the examples (one 2x2 map, one image ``a.png``)."""
    stats = ChannelStats(np.array([0.25, 0.5]), np.array([0.4, 0.8]), np.array([0.25, 0.25]), np.array([1.0, 2.0]),
                         np.array([4, 4]), np.array([0, 0]))
    rf = ReceptiveField((1.0, 1.0), (0.0, 0.0), (1.0, 1.0), "chain")
    atlas = Atlas(
        k=1, score="max", num_images=1,
        layer_table=[AtlasLayer("conv", "conv", "Conv2d", 2, (2, 2), (1.0, 1.0), rf)],
        data={"conv": LayerData(np.array([[0], [0]]), np.array([[1.0], [2.0]]), np.array([[0], [1]]),
                                np.array([[0], [0]]), stats)},
        images=["a.png"], model="tiny", input_size=(2, 2),
    )
    atlas._viewer = lambda i: Image.new("RGB", (2, 2), (200, 10, 10))
    return atlas
