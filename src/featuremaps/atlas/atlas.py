"""The :class:`Atlas`: per-channel top examples and statistics, saved as data + patches + pages.

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
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import secrets
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._outdir import read_meta
from ..errors import FeatureMapsError, LayerNotFoundError
from .receptive import ReceptiveField
from .stats import ChannelStats
from .topk import TopExample

__all__ = ["Atlas", "AtlasLayer", "load_atlas", "FORMAT"]

FORMAT = "featuremaps-atlas/1"
OWNED = ("atlas.json", "atlas.safetensors", "index.html", "layers", "patches", "synth")
"""The entries of an atlas folder that :meth:`Atlas.save` writes (and replaces)."""
_GRAY = (128, 128, 128)

ImageViewer = Callable[[int], Any]
"""``index -> PIL.Image``: the dataset example as the model sees it (for patches)."""


@dataclass(frozen=True)
class AtlasLayer:
    """What the atlas knows about one layer.

    Attributes:
        name: the captured layer name (as in :class:`~featuremaps.FeatureMaps`).
        module_name: the module's dotted name in the model.
        module_type: the module's class name.
        channels: number of channels.
        spatial: the map size ``(H, W)`` (``(L,)`` for sequences, ``()`` for vectors).
        stride: input size / map size per spatial dimension, when known.
        receptive_field: where a map position looks in the input, when known.

    Example:
        >>> AtlasLayer("conv1", "conv1", "Conv2d", 64, (56, 56), (4.0, 4.0)).channels
        64
    """

    name: str
    module_name: str
    module_type: str
    channels: int
    spatial: tuple[int, ...]
    stride: tuple[float, ...] | None = None
    receptive_field: ReceptiveField | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict.

        Example:
            >>> AtlasLayer("a", "a", "ReLU", 2, ()).to_json()["channels"]
            2
        """
        return {
            "name": self.name, "module_name": self.module_name, "module_type": self.module_type,
            "channels": self.channels, "spatial": list(self.spatial),
            "stride": list(self.stride) if self.stride is not None else None,
            "receptive_field": self.receptive_field.to_json() if self.receptive_field is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AtlasLayer:
        """Inverse of :meth:`to_json`.

        Example:
            >>> layer = AtlasLayer("a", "a", "ReLU", 2, (4, 4), (2.0, 2.0))
            >>> AtlasLayer.from_json(layer.to_json()) == layer
            True
        """
        rf = data.get("receptive_field")
        stride = data.get("stride")
        return cls(
            name=str(data["name"]), module_name=str(data.get("module_name", data["name"])),
            module_type=str(data.get("module_type", "")), channels=int(data["channels"]),
            spatial=tuple(int(s) for s in data.get("spatial", ())),
            stride=tuple(float(s) for s in stride) if stride is not None else None,
            receptive_field=ReceptiveField.from_json(rf) if rf else None,
        )


@dataclass
class _LayerData:
    index: np.ndarray  # (C, k) int64, -1 = empty
    score: np.ndarray  # (C, k) float64
    y: np.ndarray
    x: np.ndarray
    stats: ChannelStats


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
    data: dict[str, _LayerData] = field(repr=False)
    images: list[str] | None = field(default=None, repr=False)
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    model: str = ""
    input_size: tuple[int, int] | None = None
    root: str | None = None
    synthesis: dict[str, int] | None = None
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
        import difflib

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
        return _crop(view, self.patch_box(layer, ex.position), size)

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
        progress: bool = False,
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
            progress: show a progress bar.
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
        from ..models import resolve
        from ..synthesis import Channel, SynthesisError
        from ..synthesis import synthesize as synth
        from ._distributed import DEFAULT_TIMEOUT, _dist, check_in, check_timeout

        model, preprocess = resolve(model, preprocess).known()
        steps, size = check_synthesis(steps, size)
        wait = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
        if self.input_size is None:
            raise FeatureMapsError(
                "this atlas was not built from images (N, C, H, W), so its channels cannot be synthesized; "
                "synthesis needs a model that takes RGB images"
            )
        rank, world = _dist()
        images: dict[tuple[str, int], bytes] = {}
        failed: dict[str, str] = {}
        error: str | None = None
        try:
            for layer in self.layer_table:
                chans = list(range(rank, layer.channels, world))  # this rank's share
                if not chans:
                    continue
                try:
                    result = synth(model, [Channel(layer.name, c) for c in chans], steps=steps, size=size,
                                   preprocess=preprocess, progress=progress and rank == 0, return_result=True)
                except SynthesisError as exc:
                    failed[layer.name] = str(exc).splitlines()[0]
                    continue
                if result.interrupted:  # synthesize returns on Ctrl-C; stop here, not at every layer
                    raise KeyboardInterrupt
                for c, img in zip(chans, result.images):
                    images[(layer.name, c)] = _jpeg(img)
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
            warnings.warn(f"no images synthesized for {len(failed)} layer(s): {listed}", UserWarning, stacklevel=2)
        self._synth = images
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
        from PIL import Image

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
        from .._outdir import check_output_folder, record, replace_folder

        target = Path(directory)
        if patch_size < 4:
            raise FeatureMapsError(f"patch_size={patch_size} is too small; use at least 4 pixels")
        check_output_folder(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            self._write(tmp, patch_size, patches)
            record(tmp)
            kept = replace_folder(tmp, target, OWNED)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own staging folder, never the user's
            raise
        if kept:
            warnings.warn(
                f"files that appeared in {str(target)!r} while it was written were kept in "
                f"{str(Path(kept[0]).parent)!r}: {', '.join(Path(k).name for k in kept[:3])}", UserWarning,
                stacklevel=2,
            )
        return target

    def _write(self, folder: Path, patch_size: int, patches: bool) -> None:
        from safetensors.torch import save_file
        import torch

        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layer_table:
            d = self.data[layer.name]
            for key, arr in (("index", d.index), ("score", d.score), ("y", d.y), ("x", d.x),
                             ("mean", d.stats.mean), ("std", d.stats.std),
                             ("active_fraction", d.stats.active_fraction), ("max", d.stats.max),
                             ("count", d.stats.count), ("excluded", d.stats.excluded)):
                tensors[f"{layer.name}/{key}"] = torch.from_numpy(np.ascontiguousarray(arr))
        save_file(tensors, str(folder / "atlas.safetensors"), metadata={"format": FORMAT})
        meta = self._meta()
        (folder / "atlas.json").write_text(json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n",
                                           encoding="utf-8")
        have = self._write_patches(folder, patch_size) if patches else {}
        synth = self._write_synthesized(folder)
        from .html import render_index, render_layer

        (folder / "layers").mkdir()
        (folder / "index.html").write_text(render_index(self._index_data(have, synth)), encoding="utf-8")
        for i, layer in enumerate(self.layer_table):
            page = render_layer(self._layer_data(i, layer, have, synth, patch_size))
            (folder / "layers" / f"{i:03d}.html").write_text(page, encoding="utf-8")

    def _write_synthesized(self, folder: Path) -> dict[tuple[int, int], str]:
        """Write the synthesized images; returns ``(layer number, channel) -> relative path``."""
        written: dict[tuple[int, int], str] = {}
        for i, layer in enumerate(self.layer_table):
            for c in range(layer.channels):
                data = self._synth.get((layer.name, c))
                if data is None:
                    continue
                rel = f"synth/{i:03d}/{c}.jpg"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
                written[(i, c)] = rel
        return written

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "k": self.k, "score": self.score,
            "num_images": self.num_images, "input_size": list(self.input_size) if self.input_size else None,
            "root": self.root, "images": self.images, "skipped": [list(s) for s in self.skipped],
            "layers": [layer.to_json() for layer in self.layer_table], "synthesis": self.synthesis,
        }

    def _write_patches(self, folder: Path, patch_size: int) -> dict[tuple[int, int], tuple[str, int, int]]:
        """Write one grid image per channel; returns ``(layer number, channel) -> (relative path, width, height)``."""
        from PIL import Image

        written: dict[tuple[int, int], tuple[str, int, int]] = {}
        origin = self._origin
        if self._viewer is None and origin is not None and (origin / "patches").is_dir():
            shutil.copytree(origin / "patches", folder / "patches")
            for p in sorted((folder / "patches").glob("*/*")):
                if p.parent.name.isdigit() and p.stem.isdigit() and p.suffix in (".png", ".jpg"):
                    with Image.open(p) as sheet:  # reads the header only: the sheets may have another patch size
                        w, h = sheet.size
                    written[(int(p.parent.name), int(p.stem))] = (p.relative_to(folder).as_posix(), w, h)
            return written
        (folder / "patches").mkdir()
        if self._viewer is None:
            return written
        views: OrderedDict[int, Any] = OrderedDict()
        crops: OrderedDict[tuple[int, tuple[int, int, int, int] | None], Any] = OrderedDict()

        def crop(index: int, box: tuple[int, int, int, int] | None) -> Any:
            # deep layers and vectors share boxes (often the whole image): crop and resize once
            key = (index, box)
            if key in crops:
                crops.move_to_end(key)
                return crops[key]
            if index in views:
                views.move_to_end(index)
                img = views[index]
            else:
                img = self._viewer(index) if self._viewer is not None else None
                views[index] = img
                if len(views) > 256:
                    views.popitem(last=False)
            out = _crop(img, box, patch_size) if img is not None else None
            crops[key] = out
            if len(crops) > 2048:
                crops.popitem(last=False)
            return out

        for i, layer in enumerate(self.layer_table):
            d = self.data[layer.name]
            sub = folder / "patches" / f"{i:03d}"
            sub.mkdir()
            ext = _patch_ext(layer, patch_size)
            for c in range(layer.channels):
                examples = [e for e in zip(d.index[c], d.y[c], d.x[c]) if e[0] >= 0]
                if not examples:
                    continue
                # a square-ish grid of the examples there are (fewer than k when the dataset is smaller)
                cols = math.ceil(math.sqrt(len(examples)))
                rows = math.ceil(len(examples) / cols)
                sheet = Image.new("RGB", (cols * (patch_size + 2) - 2, rows * (patch_size + 2) - 2), (255, 255, 255))
                for j, (index, y, x) in enumerate(examples):
                    patch = crop(int(index), self.patch_box(layer.name, (int(y), int(x))))
                    if patch is not None:
                        sheet.paste(patch, ((j % cols) * (patch_size + 2), (j // cols) * (patch_size + 2)))
                if ext == "png":
                    sheet.save(sub / f"{c}.png", format="PNG", compress_level=6)
                else:
                    sheet.save(sub / f"{c}.jpg", format="JPEG", quality=90)
                written[(i, c)] = (f"patches/{i:03d}/{c}.{ext}", sheet.width, sheet.height)
        return written

    # -- page data (the templates in .html render these) --------------------
    def _index_data(
        self, have: dict[tuple[int, int], tuple[str, int, int]], synth: dict[tuple[int, int], str]
    ) -> dict[str, Any]:
        layers = []
        shown = 4 if synth else 6  # preview thumbnails per column: two columns with synthesized images
        for i, layer in enumerate(self.layer_table):
            st = self.data[layer.name].stats
            rf = layer.receptive_field
            layers.append({
                "href": f"layers/{i:03d}.html", "name": layer.name, "type": layer.module_type,
                "channels": layer.channels, "spatial": "\u00d7".join(str(s) for s in layer.spatial) or "vector",
                "rf": _rf_text(rf), "mean": _num(_finite_mean(st.mean)),
                "active": _pct(_finite_mean(st.active_fraction)),
                "preview": [{"src": have[(i, c)][0], "channel": c}
                            for c in range(min(layer.channels, shown)) if (i, c) in have],
                "synth_preview": [{"src": synth[(i, c)], "channel": c}
                                  for c in range(min(layer.channels, shown)) if (i, c) in synth],
            })
        return {
            "title": f"Atlas of {self.model or 'a model'}", "model": self.model, "k": self.k, "score": self.score,
            "num_images": self.num_images, "root": self.root or "", "layers": layers,
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped], "synthesized": bool(synth),
        }

    def _layer_data(
        self, i: int, layer: AtlasLayer, have: dict[tuple[int, int], tuple[str, int, int]],
        synth: dict[tuple[int, int], str], patch_size: int,
    ) -> dict[str, Any]:
        d = self.data[layer.name]
        st = d.stats
        channels = []
        for c in range(layer.channels):
            examples = [
                {"name": self.image_name(int(idx)), "index": int(idx), "score": _num(float(s)),
                 "y": int(y), "x": int(x)}
                for idx, s, y, x in zip(d.index[c], d.score[c], d.y[c], d.x[c]) if idx >= 0
            ]
            sheet = have.get((i, c))
            channels.append({
                "id": f"c{c}", "channel": c, "examples": examples,
                "image": f"../{sheet[0]}" if sheet else None, "width": sheet[1] if sheet else 0,
                "height": sheet[2] if sheet else 0,
                "synth": f"../{synth[(i, c)]}" if (i, c) in synth else None,
                "mean": _num(float(st.mean[c])), "std": _num(float(st.std[c])), "max": _num(float(st.max[c])),
                "active": _pct(float(st.active_fraction[c])),
            })
        cols = max(1, math.ceil(math.sqrt(self.k)))
        rows = math.ceil(self.k / cols)
        sheets = [have[(i, c)] for c in range(layer.channels) if (i, c) in have]
        width = max((w for _, w, _ in sheets), default=cols * (patch_size + 2) - 2)
        height = max((h for _, _, h in sheets), default=rows * (patch_size + 2) - 2)
        side = 0
        if any((i, c) in synth for c in range(layer.channels)):
            natural = int((self.synthesis or {}).get("size", 96))
            side = min(max(height, 64), 2 * natural)  # as tall as the patches, enlarged at most twice
        return {
            "title": f"{layer.name} \u00b7 atlas of {self.model or 'a model'}", "name": layer.name,
            "type": layer.module_type, "channels": channels, "k": self.k, "score": self.score,
            "num_images": self.num_images, "spatial": "\u00d7".join(str(s) for s in layer.spatial) or "vector",
            "rf": _rf_text(layer.receptive_field), "sheet_width": width, "sheet_height": height,
            "synth_side": side,
            "prev": f"{i - 1:03d}.html" if i > 0 else None,
            "next": f"{i + 1:03d}.html" if i + 1 < len(self.layer_table) else None,
        }

    def __repr__(self) -> str:
        return (
            f"Atlas(model={self.model!r}, layers={len(self.layer_table)}, "
            f"channels={sum(la.channels for la in self.layer_table)}, k={self.k}, score={self.score!r}, "
            f"images={self.num_images}, skipped={len(self.skipped)})"
        )


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


def _jpeg(img: Any) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _gather_synthesized(
    images: dict[tuple[str, int], bytes], failed: dict[str, str], error: str | None, world: int
) -> tuple[dict[tuple[str, int], bytes], dict[str, str], str | None]:
    """Every rank's synthesized images, failed layers and error, on every rank."""
    import torch

    from ._distributed import _comm_device, _gather_json

    device = _comm_device(torch.device("cpu"))
    parts = _gather_json(
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


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _num(v: float) -> str:
    if not math.isfinite(v):
        return "\u2013"
    return f"{v:.3g}"


def _pct(v: float) -> str:
    return "\u2013" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _rf_text(rf: ReceptiveField | None) -> str:
    if rf is None:
        return "unknown"
    if rf.method == "global":
        return "whole input"
    return f"{rf.size[0]:g}\u00d7{rf.size[1]:g} px, stride {rf.stride[0]:g} ({rf.method})"


def _patch_ext(layer: AtlasLayer, patch_size: int) -> str:
    """PNG for small fields shown enlarged (blocky, compresses well), JPEG for photo-like crops."""
    rf = layer.receptive_field
    if rf is not None and rf.method != "global" and max(rf.size) * 2 <= patch_size:
        return "png"
    return "jpg"


def _crop(img: Any, box: tuple[int, int, int, int] | None, size: int | None) -> Any:
    """Crop ``box`` out of ``img``, gray where it falls outside; resize to ``size`` (square)."""
    from PIL import Image

    if box is None:
        out = img.convert("RGB")
    else:
        top, left, bottom, right = box
        w, h = img.size
        # a field at least as large as the image shows the whole image (not a small image in gray)
        if bottom - top >= h:
            top, bottom = 0, h
        if right - left >= w:
            left, right = 0, w
        out = Image.new("RGB", (max(1, right - left), max(1, bottom - top)), _GRAY)
        it, il, ib, ir = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
        if ib > it and ir > il:
            out.paste(img.convert("RGB").crop((il, it, ir, ib)), (il - left, it - top))
    if size is not None and out.size != (size, size):
        if out.width != out.height:  # pad to a square, centred, so the argmax stays in the middle
            side = max(out.size)
            square = Image.new("RGB", (side, side), _GRAY)
            square.paste(out, ((side - out.width) // 2, (side - out.height) // 2))
            out = square
        if out.width < size:
            out = out.resize((size, size), Image.Resampling.NEAREST)
        else:
            out = out.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return out


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
    folder = Path(directory)
    meta, data_path = read_meta(folder, "atlas", FORMAT, "Atlas.save or `featuremaps atlas -o`")
    from safetensors import safe_open

    table = [AtlasLayer.from_json(d) for d in meta["layers"]]
    data: dict[str, _LayerData] = {}
    try:
        with safe_open(str(data_path), framework="np") as f:
            for layer in table:
                def get(key: str, name: str = layer.name) -> np.ndarray:
                    return np.asarray(f.get_tensor(f"{name}/{key}"))

                stats = ChannelStats(get("mean"), get("std"), get("active_fraction"), get("max"), get("count"),
                                     get("excluded"))
                data[layer.name] = _LayerData(get("index"), get("score"), get("y"), get("x"), stats)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise FeatureMapsError(f"cannot read {str(data_path)!r}: {exc}; the atlas folder is damaged") from None
    images = meta.get("images")
    size = meta.get("input_size")
    atlas = Atlas(
        k=int(meta["k"]), score=str(meta["score"]), num_images=int(meta["num_images"]), layer_table=table,
        data=data, images=list(images) if images is not None else None,
        skipped=[(str(a), str(b)) for a, b in meta.get("skipped", [])], model=str(meta.get("model", "")),
        input_size=(int(size[0]), int(size[1])) if size else None, root=meta.get("root"),
    )
    synthesis = meta.get("synthesis")
    if synthesis:
        atlas.synthesis = {"steps": int(synthesis["steps"]), "size": int(synthesis["size"])}
        for i, layer in enumerate(table):
            sub = folder / "synth" / f"{i:03d}"
            for c in range(layer.channels):
                path = sub / f"{c}.jpg"
                if path.is_file():
                    atlas._synth[(layer.name, c)] = path.read_bytes()
    atlas._origin = folder.resolve()
    return atlas


def _tiny_atlas() -> Atlas:
    """A two-channel atlas for the examples (one 2x2 map, one image ``a.png``)."""
    from PIL import Image

    stats = ChannelStats(np.array([0.25, 0.5]), np.array([0.4, 0.8]), np.array([0.25, 0.25]), np.array([1.0, 2.0]),
                         np.array([4, 4]), np.array([0, 0]))
    rf = ReceptiveField((1.0, 1.0), (0.0, 0.0), (1.0, 1.0), "chain")
    atlas = Atlas(
        k=1, score="max", num_images=1,
        layer_table=[AtlasLayer("conv", "conv", "Conv2d", 2, (2, 2), (1.0, 1.0), rf)],
        data={"conv": _LayerData(np.array([[0], [0]]), np.array([[1.0], [2.0]]), np.array([[0], [1]]),
                                 np.array([[0], [0]]), stats)},
        images=["a.png"], model="tiny", input_size=(2, 2),
    )
    atlas._viewer = lambda i: Image.new("RGB", (2, 2), (200, 10, 10))
    return atlas
