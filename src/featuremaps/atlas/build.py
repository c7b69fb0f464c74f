"""``build_atlas``: one streaming pass of the capture engine over a dataset.

The pass runs :class:`~featuremaps.FeatureExtractor` with a reducer that,
inside each layer's hook, merges the batch into that layer's
:class:`~.topk.TopK` (on the model's device; the spatial argmax is looked up
only for the maps that enter a top-k) and keeps a few numbers per image and
channel (mean, variance, positive count, max); the feature map is dropped as
soon as the hook returns. After each forward those numbers are merged, for
all layers at once, into a :class:`~.stats.RunningStats`. Memory is
O(layers x channels x k), whatever the dataset's size, plus one scratch
buffer the size of the largest map.

Under ``torch.distributed`` each rank reads its shard (a
:class:`~torch.utils.data.distributed.DistributedSampler`, without the
padding it adds to even out the shards, so no image counts twice) and the
per-rank states are gathered and merged at the end. Both merges are exact and
order-free (ties broken by dataset index, statistics from exact sums), so the
atlas is the same, bit for bit, on one process or many, and after a resume -
provided the model gives each image the same activations whatever batch it is
in. That holds for many CPU kernels but is not guaranteed (oneDNN convolutions
may round differently for a batch of one; GPU libraries pick algorithms by
shape): then the atlases agree up to the model's own rounding noise.

Checkpoints (safetensors + JSON, no pickle, with a SHA-256 of their data;
see :mod:`.checkpoint`) are written every ``checkpoint_every`` images and
when the pass is interrupted; re-running with the same arguments continues
from there, after the checkpoint is verified (a damaged one is set aside and
the pass starts over). The output folder is checked before any work (see
:mod:`featuremaps._outdir`). Where ranks meet, each waits at most
``timeout`` seconds for the others (:mod:`._distributed`).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import FeatureMapsError
from ..layers import LayerSelector, resolve_layers
from ..maps import LayerInfo
from .._outdir import check_output_folder
from ._device import asynchronous
from ._distributed import (
    DEFAULT_TIMEOUT, _all_gather, _comm_device, _dist, _gather_json, check_in, check_timeout,
)
from .atlas import Atlas, AtlasLayer, _LayerData, check_synthesis
from .checkpoint import discard_checkpoint, load_checkpoint, save_checkpoint
from .receptive import receptive_fields
from .sources import (  # noqa: F401 - (_FolderImages, _progression: the tests reach them through this module)
    IMAGE_SUFFIXES, _Collate, _digest, _first_item, _FolderImages, _Indexed, _make_source, _progression, _Progress,
    _ShardSampler, _Source, _to_device, image_files,
)
from .stats import RunningStats, per_image_moments
from .topk import EMPTY_INDEX, TopK, update_all

__all__ = ["build_atlas", "image_files", "IMAGE_SUFFIXES"]


# --------------------------------------------------------------------------- fingerprints


def _model_signature(model: nn.Module) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if t.numel() and not t.is_complex():
                h.update(repr(float(t.detach().double().sum())).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the reducer


def _candidate_argmax(flat: torch.Tensor, score: torch.Tensor, top: TopK) -> torch.Tensor:
    """Flat spatial argmax ``(batch, channels)`` of the maps that may enter ``top`` (0 for the others).

    Only maps scoring at least their channel's current k-th best can enter a
    top-k, so only theirs are located (finding an argmax costs a pass over the
    map); the other entries are never read.
    """
    dev = top.device
    s = torch.nan_to_num(score.to(dev, torch.float64), nan=-math.inf)  # as TopK ranks NaN
    rows, chans = torch.nonzero(s >= top.score[:, -1], as_tuple=True)
    out = torch.zeros(s.shape, dtype=torch.int64, device=dev)
    if rows.numel():
        r, c = rows.to(flat.device), chans.to(flat.device)
        if 3 * r.numel() > flat.shape[0] * flat.shape[1]:
            # many maps may enter (the first batches): one pass over the whole batch costs less than
            # copying a third of it out first
            pos = flat.argmax(2)[r, c]  # the first maximum, as below
        else:
            pos = flat[r, c].argmax(1)
        out[rows, chans] = pos.to(dev)
    return out


@dataclass
class _Pending:
    """One layer's part of the batch for its top-k, ``(batch, channels)`` each.

    ``flat_index`` is the spatial argmax within the flattened map; with the
    map's ``width`` it becomes ``(y, x)`` for all layers at once when the batch
    is merged.
    """

    score: torch.Tensor
    flat_index: torch.Tensor
    width: int


@dataclass
class _Reduced:
    info: LayerInfo
    count: int  # positions per map
    mean: torch.Tensor  # (B, C)
    var: torch.Tensor
    active: torch.Tensor
    maximum: torch.Tensor


class _AtlasReducer:
    """The capture reducer: merges a layer's top-k and keeps a few numbers per (image, channel).

    Called inside the forward hook; the map is dropped when it returns, leaving
    a few numbers per (image, channel): moments, maximum, score and the spatial
    argmax of the maps that may enter a top-k (on the CPU only those are
    located; on an accelerator all are, in the same kernel as the maximum). The
    top-k and statistics of all layers are merged at the end of the forward.
    """

    name = "atlas"

    def __init__(self, score: str, k: int, device: torch.device) -> None:
        self.score = score
        self.k = k
        self.device = device
        self.tops: dict[str, TopK] = {}
        self.indices: torch.Tensor | None = None  # the dataset indices of the batch being run
        self.batch: dict[str, _Reduced] = {}
        # the top-k after this batch, committed only once the whole forward has run (an
        # interrupt during the forward then leaves every state as it was after the last batch)
        self.pending: dict[str, _Pending] = {}
        self._widths: tuple[tuple[tuple[int, int], ...], torch.Tensor] | None = None  # cached per-channel widths
        self._buffer: torch.Tensor | None = None  # one map-sized scratch buffer, reused by every layer

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.numel() < like.numel() or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffer = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buf

    def __call__(self, t: torch.Tensor, info: LayerInfo) -> None:
        if info.channels is None or t.ndim < 2:
            return None
        nsp = t.ndim - 2
        if nsp > 2:
            raise FeatureMapsError(
                f"layer {info.name!r} has {nsp}-D maps {tuple(t.shape)}; the atlas supports images, sequences "
                "and vectors (up to 2 spatial dimensions): select other layers"
            )
        flat = t.detach().reshape(t.shape[0], t.shape[1], -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        argmax: torch.Tensor | None = None
        if not asynchronous(flat.device):
            maximum = flat.amax(2)
            mean, var, active = per_image_moments(flat, self._scratch(flat))
        else:
            # on an accelerator a pass over the map is cheap and a wait for the device is not: one
            # kernel gives every map's maximum and its position, and nothing in this hook waits
            maximum, argmax = flat.max(2)
            mean, var, active = per_image_moments(flat)
        if self.indices is not None:
            top = self.tops.get(info.name)
            if top is None:
                top = self.tops[info.name] = TopK(int(flat.shape[1]), self.k, self.device)
            if top.channels == flat.shape[1]:
                score = maximum if self.score == "max" else mean
                located = _candidate_argmax(flat, score, top) if argmax is None else argmax.to(top.device)
                self.pending[info.name] = _Pending(score, located, int(t.shape[-1]) if nsp == 2 else 0)
        self.batch[info.name] = _Reduced(info, int(flat.shape[2]), mean, var, active, maximum)
        return None

    def commit(self) -> None:
        """Merge the batch just run into the top-k of every layer (one sort for all their channels)."""
        if self.pending and self.indices is not None:
            names = list(self.pending)
            parts = [self.pending[n] for n in names]
            y, x = self._locate(parts)
            sizes = [int(p.score.shape[1]) for p in parts]
            update_all([self.tops[n] for n in names], [p.score for p in parts], self.indices,
                       list(y.split(sizes, 1)), list(x.split(sizes, 1)))
        self.pending = {}

    def _locate(self, parts: list[_Pending]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, x)``, ``(batch, all channels)``, of every part's flat argmax: two operations for all layers."""
        key = tuple((p.width, int(p.flat_index.shape[1])) for p in parts)
        if self._widths is None or self._widths[0] != key:
            # per channel, the row length; 1-D maps get one longer than any index: y = 0, x = index
            width = torch.tensor([w or (1 << 62) for w, _ in key]).repeat_interleave(torch.tensor([c for _, c in key]))
            self._widths = (key, width.to(parts[0].flat_index.device))
        flat = torch.cat([p.flat_index for p in parts], 1)
        return flat // self._widths[1], flat % self._widths[1]

    def release(self) -> None:
        """Drop the scratch buffer."""
        self._buffer = None


# --------------------------------------------------------------------------- state


@dataclass
class _State:
    layers: list[AtlasLayer]
    tops: dict[str, TopK]
    stats: RunningStats
    images: int = 0
    position: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None
    _counts: tuple[tuple[int, ...], torch.Tensor] | None = field(default=None, repr=False)

    def update(self, reduced: dict[str, _Reduced]) -> None:
        """Merge the per-image moments of every layer (one exact accumulation for all)."""
        dev = self.stats.device
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("mean", "var", "active", "max")}
        counts: list[int] = []
        b = next(iter(reduced.values())).mean.shape[0] if reduced else 0
        for layer in self.layers:
            r = reduced.get(layer.name)
            c = layer.channels
            if r is None or r.mean.shape != (b, c):
                # the layer did not run (or changed shape): nothing to add for it
                for key in parts:  # (counts stay integers: a float would round them beyond 2**24)
                    parts[key].append(torch.zeros((b, c), device=dev, dtype=torch.int64 if key == "active" else None))
                counts.append(0)
                continue
            parts["mean"].append(r.mean.to(dev))
            parts["var"].append(r.var.to(dev))
            parts["active"].append(r.active.to(dev))
            parts["max"].append(r.maximum.to(dev))
            counts.append(r.count)
        cat = {k: torch.cat(v, 1) for k, v in parts.items()}  # one conversion each, below, not one per layer
        per_layer = tuple(counts)
        cached = self._counts
        if cached is None or cached[0] != per_layer:  # the same tensor every batch: no copy, no check
            sizes = torch.tensor([la.channels for la in self.layers])
            cached = self._counts = (per_layer, torch.tensor(counts).repeat_interleave(sizes).to(dev))
        self.stats.update(cached[1], cat["mean"], cat["var"], cat["active"], cat["max"])

    def merge(self, other: _State) -> _State:
        return _State(
            self.layers, {la.name: self.tops[la.name].merge(other.tops[la.name]) for la in self.layers},
            self.stats.merge(other.stats), self.images + other.images, 0, sorted(self.skipped + other.skipped),
            self.input_shape or other.input_shape,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = self.stats.state_dict("stats.")
        for i, layer in enumerate(self.layers):
            out.update(self.tops[layer.name].state_dict(f"top.{i}."))
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "layers": [la.to_json() for la in self.layers], "images": self.images, "position": self.position,
            "skipped": [list(s) for s in self.skipped],
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
        }

    @classmethod
    def restore(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device) -> _State:
        layers = [AtlasLayer.from_json(d) for d in meta["layers"]]
        tensors = dict(tensors)
        return cls(
            layers=layers,
            tops={la.name: TopK.from_state_dict(tensors, f"top.{i}.", device) for i, la in enumerate(layers)},
            stats=RunningStats.from_state_dict(tensors, "stats.", device),
            images=int(meta["images"]), position=int(meta["position"]),
            skipped=[(int(i), str(r)) for i, r in meta["skipped"]],
            input_shape=tuple(meta["input_shape"]) if meta.get("input_shape") else None,
        )


def _new_state(reducer: _AtlasReducer, selector: LayerSelector) -> _State:
    if not reducer.batch:
        raise FeatureMapsError(
            f"layers={selector!r} captured no map with a channel axis; select layers whose output has "
            "channels (see fm.list_layers(model, x))"
        )
    layers = []
    for name, r in reducer.batch.items():  # hook order = execution order
        info = r.info
        layers.append(AtlasLayer(
            name=name, module_name=info.module_name, module_type=info.module_type,
            channels=int(r.mean.shape[1]), spatial=tuple(info.spatial), stride=info.stride,
        ))
    tops = {la.name: reducer.tops.get(la.name) or TopK(la.channels, reducer.k, reducer.device) for la in layers}
    return _State(layers, tops, RunningStats(sum(la.channels for la in layers), reducer.device))


# --------------------------------------------------------------------------- checkpoints and ranks


def _save_checkpoint(path: Path, state: _State, fingerprint: str) -> None:
    save_checkpoint(path, state.tensors(), state.meta(), fingerprint)


def _merge_ranks(state: _State, world: int) -> _State:
    device = _comm_device(state.stats.device)
    metas = _gather_json(
        {"layers": [[la.name, la.channels] for la in state.layers], "images": state.images,
         "skipped": [list(s) for s in state.skipped]},
        device, world,
    )
    if any(m["layers"] != metas[0]["layers"] for m in metas):
        raise FeatureMapsError(
            "the ranks captured different layers (the model or the layer selection differs between processes); "
            "run every rank with the same model and --layers"
        )
    gathered = {key: _all_gather(v, device, world) for key, v in state.tensors().items()}
    merged: _State | None = None
    for r in range(world):
        meta = {**state.meta(), "images": metas[r]["images"], "skipped": metas[r]["skipped"], "position": 0}
        part = _State.restore({key: v[r] for key, v in gathered.items()}, meta, state.stats.device)
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise FeatureMapsError(f"world size {world} has no ranks")
    return merged


# --------------------------------------------------------------------------- build_atlas


def build_atlas(
    model: nn.Module | Any,
    data: Any,
    *,
    layers: LayerSelector = None,
    k: int = 9,
    score: str = "max",
    batch_size: int | None = None,
    preprocess: Any = None,
    num_workers: int = 0,
    checkpoint_every: int | None = 1000,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    patch_size: int = 64,
    receptive: str = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    synthesize: bool = False,
    synth_steps: int = 128,
    synth_size: int = 96,
    timeout: float = DEFAULT_TIMEOUT,
) -> Atlas:
    """Find, for every channel of ``layers``, the ``k`` dataset examples that activate it most.

    One pass over ``data`` with the capture engine; per channel the top
    ``k`` ``(dataset index, score, spatial argmax)`` and the dataset
    statistics (mean, std, fraction of positions > 0, max) are kept, merged on
    the model's device after every batch. Memory does not grow with the
    dataset. Under ``torch.distributed`` (e.g. ``torchrun``), each rank reads
    its shard and the ranks' results are merged exactly: the atlas equals the
    single-process one, and only rank 0 writes ``out``.

    Args:
        model: the model, or the :class:`~featuremaps.LoadedModel` from
            :func:`~featuremaps.load_model` (which brings its preprocessing).
        data: an image folder (read recursively, with the model's
            preprocessing; unreadable images are skipped and listed), a
            map-style torch ``Dataset`` whose items are input tensors, PIL
            images or ``(input, ...)`` tuples, or a ``DataLoader`` (its
            dataset, batch size, workers and collate function are used; its
            sampler is not: every item is visited once).
        layers: which layers (see :data:`featuremaps.layers.LayerSelector`);
            default: every leaf layer with a spatial output.
        k: examples kept per channel.
        score: rank examples by the channel's spatial ``"max"`` or ``"mean"``.
        batch_size: images per forward (default: the loader's, else 32).
        preprocess: the model's preprocessing (``fm.load_model(...)[1]``);
            needed for folders and PIL images, and used to draw patches.
        num_workers: DataLoader worker processes.
        checkpoint_every: save the running state every this many images
            (``None``: never; the state is also saved when interrupted).
        out: write the atlas folder here (rank 0 only) and keep checkpoints
            next to it, in ``.<name>.partial``.
        resume: continue from a checkpoint made with the same arguments.
        progress: show a progress bar with images/s (rank 0).
        patch_size: thumbnail size in pixels when saving.
        receptive: how patches are sized: ``"auto"``, ``"chain"`` or
            ``"gradient"`` (see :mod:`featuremaps.atlas.receptive`), or
            ``"none"`` (patches show whole images).
        checkpoint_dir: where to keep checkpoints (default: next to ``out``).
        synthesize: also synthesize, for every channel, an image that
            excites it (:meth:`~featuremaps.atlas.Atlas.synthesize`), shown
            in the channel's card and saved in the folder. Off by default:
            it costs about ``synth_steps`` forward and backward passes per
            batch of channels. Needs a model that takes RGB images; under
            ``torch.distributed`` the ranks share the channels.
        synth_steps: optimization steps per synthesized image.
        synth_size: synthesized image size in pixels.
        timeout: under ``torch.distributed``, the seconds a rank waits for
            the others where they meet (the end of the pass, the end of the
            synthesis); a rank that does not come in time is named in a
            :class:`~featuremaps.atlas.DistributedTimeoutError`.

    Returns:
        The :class:`~featuremaps.atlas.Atlas` (on every rank).

    Raises:
        FeatureMapsError: bad arguments, an empty folder, an ``out`` folder
            holding files featuremaps did not write (checked before any
            work), layers that differ between ranks, a rank that does not
            answer within ``timeout``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.atlas import build_atlas
        >>> images = torch.rand(6, 3, 8, 8)
        >>> atlas = build_atlas(nn.Sequential(nn.Conv2d(3, 2, 3)), images, layers="0", k=2, progress=False)
        >>> len(atlas.top_examples("0", channel=1)), atlas.num_images
        (2, 6)
        >>> atlas = build_atlas(nn.Sequential(nn.Conv2d(3, 2, 3)), images, layers="0", k=2, progress=False,
        ...                     synthesize=True, synth_steps=2, synth_size=8)
        >>> atlas.synthesized("0", channel=1).size
        (8, 8)
    """
    from ..capture import FeatureExtractor
    from ..models import resolve

    model, preprocess = resolve(model, preprocess).known()  # a model from fm.load_model: its own preprocessing
    if score not in ("max", "mean"):
        raise FeatureMapsError(f"score={score!r} is not a score; use 'max' (spatial maximum) or 'mean'")
    if not isinstance(k, int) or k < 1:
        raise FeatureMapsError(f"k={k!r} must be a positive int: the number of examples kept per channel")
    if batch_size is not None and batch_size < 1:
        raise FeatureMapsError(f"batch_size={batch_size} must be >= 1")
    if receptive not in ("auto", "chain", "gradient", "none"):
        raise FeatureMapsError(f"receptive={receptive!r} is not a method; use 'auto', 'chain', 'gradient' or 'none'")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise FeatureMapsError(f"checkpoint_every={checkpoint_every} must be >= 1 image, or None for no checkpoints")
    if not isinstance(synthesize, bool):
        raise FeatureMapsError(f"synthesize={synthesize!r} must be True or False")
    if synthesize:
        check_synthesis(synth_steps, synth_size)
    timeout = check_timeout(timeout)
    rank, world = _dist()
    if out is not None and rank == 0:
        check_output_folder(out)  # before any work: never a pass whose result cannot be written

    src = _make_source(data, preprocess, batch_size, num_workers)
    n_items = len(src.dataset)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    ckpt: Path | None = None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir)
    elif out is not None:
        target = Path(out)
        ckpt = target.parent / f".{target.name}.partial"
    ckpt_file = ckpt / f"rank{rank}-of-{world}.safetensors" if ckpt is not None else None
    fingerprint = ""
    if ckpt_file is not None:
        fingerprint = _digest({
            "source": src.fingerprint, "model": _model_signature(model),
            "layers": sorted(resolve_layers(model, layers).modules), "k": k, "score": score,
            "world": world, "rank": rank,
        })

    state: _State | None = None
    if ckpt_file is not None:
        if resume:
            state = load_checkpoint(ckpt_file, fingerprint, lambda t, m: _State.restore(t, m, device), k=k,
                                    n_items=n_items, rank=rank, world=world)
        else:
            discard_checkpoint(ckpt_file)
    start = state.position if state is not None else 0

    loader = DataLoader(
        _Indexed(src.dataset, src.transform), batch_size=src.batch_size,
        sampler=_ShardSampler(n_items, rank, world, start), num_workers=src.num_workers,
        collate_fn=_Collate(src.collate), pin_memory=src.pin_memory,
    )
    reducer = _AtlasReducer(score, k, device)
    if state is not None:
        reducer.tops = state.tops
    bar = _Progress(n_items, progress and rank == 0)
    bar.advance(0, completed=min(n_items, start * world))
    position = start
    images = state.images if state is not None else 0
    skipped: list[tuple[int, str]] = list(state.skipped) if state is not None else []
    last_saved = start
    consistent = True  # False while a batch is being merged: an interrupt then must not be checkpointed
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"layers .* did not run")
            with FeatureExtractor(model, layers, reduce=reducer) as fx:
                for indices, batch, failed in loader:
                    n = int(indices.shape[0])
                    if n:
                        reducer.batch, reducer.pending = {}, {}
                        reducer.indices = _to_device(indices, device)
                        x = _first_item(batch)
                        fx(x)
                        consistent = False
                        reducer.commit()
                        if state is None:
                            state = _new_state(reducer, layers)
                            if isinstance(x, torch.Tensor):
                                state.input_shape = tuple(int(s) for s in x.shape[1:])
                        state.update(reducer.batch)
                    reducer.batch = {}
                    images += n
                    skipped.extend(failed)
                    position += n + len(failed)
                    if state is not None:
                        state.images, state.position, state.skipped = images, position, skipped
                    consistent = True
                    if (state is not None and ckpt_file is not None and checkpoint_every is not None
                            and position - last_saved >= checkpoint_every):
                        # saving adds the statistics' queued batches to the state: an interrupt in there
                        # must not be followed by a save of the half-added state (the last file stays)
                        consistent = False
                        _save_checkpoint(ckpt_file, state, fingerprint)
                        consistent = True
                        last_saved = position
                    bar.advance((n + len(failed)) * world)
    except BaseException:
        if consistent and state is not None and ckpt_file is not None and position > last_saved:
            _save_checkpoint(ckpt_file, state, fingerprint)
        raise
    finally:
        bar.close()
        reducer.release()

    if state is None:
        state = _discover(model, layers, src, k, device)
        state.skipped = skipped
        state.position = position
    elif synthesize and ckpt_file is not None and position > last_saved:
        _save_checkpoint(ckpt_file, state, fingerprint)  # an interrupted synthesis does not cost the pass
    if world > 1:
        check_in("the end of the pass", timeout)
        state = _merge_ranks(state, world)

    atlas = _to_atlas(state, model, src, k, score, preprocess, receptive)
    if synthesize:
        shape = state.input_shape
        if shape is not None and len(shape) == 3 and shape[0] == 3:
            atlas.synthesize(model, steps=synth_steps, size=synth_size, preprocess=preprocess,
                             progress=progress, timeout=timeout)
        else:
            warnings.warn(
                f"synthesize=True needs a model that takes RGB images (N, 3, H, W); this one takes "
                f"{('(N, ' + ', '.join(str(v) for v in shape) + ')') if shape else 'other inputs'}: "
                "no images synthesized", UserWarning, stacklevel=2,
            )
    if world > 1:
        if ckpt_file is not None and rank != 0:
            ckpt_file.unlink(missing_ok=True)  # this rank's share is in the merged state now
        check_in("the end of the atlas", timeout)  # (then rank 0 removes the checkpoint folder, emptied)
    if rank == 0:
        # the other ranks do not wait for this save (however long it takes); their checkpoints are
        # gone, so a save that fails costs them their share of a rerun, never a wrong atlas
        if out is not None:
            atlas.save(out, patch_size=patch_size)
        if ckpt_file is not None:
            ckpt_file.unlink(missing_ok=True)
            _remove_empty(ckpt)
    return atlas


def _remove_empty(folder: Path | None) -> None:
    if folder is not None:
        try:
            folder.rmdir()
        except OSError:
            pass


def _discover(model: nn.Module, layers: LayerSelector, src: _Source, k: int, device: torch.device) -> _State:
    """The layer table from one forward on the first readable item (a rank with no images needs it)."""
    from ..capture import FeatureExtractor

    ds = _Indexed(src.dataset, src.transform)
    collate = _Collate(src.collate)
    for i in range(len(ds)):
        indices, batch, _ = collate([ds[i]])
        if indices.numel():
            reducer = _AtlasReducer("max", k, device)  # no indices: the top-k are not touched
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"layers .* did not run")
                with FeatureExtractor(model, layers, reduce=reducer) as fx:
                    x = _first_item(batch)
                    fx(x)
            state = _new_state(reducer, layers)
            if isinstance(x, torch.Tensor):
                state.input_shape = tuple(int(s) for s in x.shape[1:])
            return state
    raise FeatureMapsError("no readable image in the dataset; check the folder or dataset (every item failed to load)")


def _to_atlas(
    state: _State, model: nn.Module, src: _Source, k: int, score: str, preprocess: Any, receptive: str
) -> Atlas:
    stats = state.stats.result()
    fields: dict[str, Any] = {}
    shape = state.input_shape
    if shape is not None and len(shape) == 3 and receptive != "none":
        spatial = {la.name: la.module_name for la in state.layers if len(la.spatial) in (0, 2)}
        if spatial:
            fields = receptive_fields(model, spatial, shape, method=receptive)
    table: list[AtlasLayer] = []
    data: dict[str, _LayerData] = {}
    offset = 0
    for la in state.layers:
        top = state.tops[la.name]
        index = top.index.cpu().numpy().copy()
        index[index == EMPTY_INDEX] = -1
        layer = AtlasLayer(la.name, la.module_name, la.module_type, la.channels, la.spatial, la.stride,
                           fields.get(la.name))
        table.append(layer)
        data[la.name] = _LayerData(index, top.score.cpu().numpy(), top.y.cpu().numpy(), top.x.cpu().numpy(),
                                   stats.slice(offset, offset + la.channels))
        offset += la.channels
    names = src.names
    skipped = [(names[i] if names is not None else f"#{i}", reason) for i, reason in sorted(state.skipped)]
    card = getattr(preprocess, "card", None)
    input_size = (int(shape[1]), int(shape[2])) if shape is not None and len(shape) == 3 else None
    atlas = Atlas(
        k=k, score=score, num_images=state.images, layer_table=table, data=data, images=names,
        skipped=skipped, model=str(getattr(card, "name", None) or type(model).__name__), input_size=input_size,
        root=src.root,
    )
    atlas._viewer = src.viewer
    return atlas

