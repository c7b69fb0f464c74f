"""``build_atlas``: one streaming pass of the capture engine over a dataset.

The pass runs :class:`~featuremaps.FeatureExtractor` with a reducer that,
inside each layer's hook, reads each map once for a few numbers per image
and channel (maximum and its position, mean, variance, positive count; on a
CPU with the C kernel of :mod:`.fused`); the feature map is dropped as soon
as the hook returns. After each forward those numbers are merged, for all
layers at once, into each layer's :class:`~.topk.TopK` and a
:class:`~.stats.RunningStats`, on the model's device, in a worker thread
while the next forward runs (on an accelerator; on the CPU where the C
library merges, on one thread beside the forward's; with PyTorch's merges,
right after the forward). Memory is O(layers x channels x k), whatever the
dataset's size, plus one scratch buffer the size of the largest map.

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
``timeout`` seconds for the others (:mod:`featuremaps.datapass.distributed`).

The parts: the reducer (:mod:`.reducer`), the state that checkpoints hold and
ranks merge (:mod:`.state`), the checkpoints (:mod:`.checkpoint`), the data
and ranks (:mod:`featuremaps.datapass`); this module runs the pass in steps
(check the arguments, open the checkpoints, run the loop, merge, make the
atlas, save).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._outdir import check_output_folder
from .._progress import Progress, ProgressArg, reporter
from ..capture import FeatureExtractor
from ..datapass import (
    DEFAULT_TIMEOUT,
    Source,
    asynchronous,
    check_in,
    check_timeout,
    digest,
    first_item,
    first_readable,
    interrupts_held,
    make_source,
    rank_world,
    shard_loader,
    to_device,
)
from ..errors import FeatureMapsError
from ..layers import LayerSelector, resolve_layers
from ..models import resolve
from .atlas import Atlas, AtlasLayer
from ..datapass.checkpoint import CheckpointFiles, model_signature
from .checkpoint import discard_checkpoint, load_checkpoint, save_checkpoint
from . import native
from .data import LayerData
from .fused import fused_mode
from .receptive import receptive_fields
from .reducer import AtlasReducer
from .state import AtlasState, merge_ranks, new_state
from .synth import check_synthesis
from .topk import EMPTY_INDEX

__all__ = ["build_atlas"]

RECEPTIVE_METHODS = ("auto", "chain", "gradient", "none")


# --------------------------------------------------------------------------- build_atlas, in steps


def build_atlas(
    model: nn.Module | Any, data: Any, *, layers: LayerSelector = None, k: int = 9, score: str = "max",
    batch_size: int | None = None, preprocess: Any = None, num_workers: int = 0,
    checkpoint_every: int | None = 1000, out: str | os.PathLike[str] | None = None, resume: bool = True,
    progress: ProgressArg = True, patch_size: int = 64, receptive: str = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None, synthesize: bool = False, synth_steps: int = 128,
    synth_size: int = 96, timeout: float = DEFAULT_TIMEOUT,
) -> Atlas:
    """Find, for every channel of ``layers``, the ``k`` dataset examples that activate it most.

    One pass over ``data`` with the capture engine; per channel the top ``k`` ``(dataset index, score, spatial
    argmax)`` and the dataset statistics (mean, std, fraction of positions > 0, max) are kept, merged on the
    model's device after every batch. Memory does not grow with the dataset. Under ``torch.distributed`` (e.g.
    ``torchrun``), each rank reads its shard and the ranks' results are merged exactly: the atlas equals the
    single-process one, and only rank 0 writes ``out``.

    Args:
        model: the model, or the :class:`~featuremaps.LoadedModel` from :func:`~featuremaps.load_model` (which
            brings its preprocessing).
        data: an image folder (read recursively, with the model's preprocessing; unreadable images are skipped
            and listed), a map-style torch ``Dataset`` whose items are input tensors, PIL images or
            ``(input, ...)`` tuples, or a ``DataLoader`` (its dataset, batch size, workers and collate function
            are used; its sampler is not: every item is visited once).
        layers: which layers (see :data:`featuremaps.layers.LayerSelector`); default: every leaf layer with a
            spatial output.
        k: examples kept per channel.
        score: rank examples by the channel's spatial ``"max"`` or ``"mean"``.
        batch_size: images per forward (default: the loader's, else 32).
        preprocess: the model's preprocessing (``fm.load_model(...)[1]``); needed for folders and PIL images,
            and used to draw patches.
        num_workers: DataLoader worker processes.
        checkpoint_every: save the running state every this many images (``None``: never; the state is also
            saved when interrupted).
        out: write the atlas folder here (rank 0 only) and keep checkpoints next to it, in ``.<name>.partial``.
        resume: continue from a checkpoint made with the same arguments.
        progress: ``True`` for a progress bar with images/s, ``False`` for none, or a callable
            ``progress(stage, done, total)``, called (on rank 0) with the ``"atlas"`` stage (images read, out of
            the dataset's) and, with ``synthesize=True``, the ``"synthesis"`` stage (optimization steps).
        patch_size: thumbnail size in pixels when saving.
        receptive: how patches are sized: ``"auto"``, ``"chain"`` or ``"gradient"`` (see
            :mod:`featuremaps.atlas.receptive`), or ``"none"`` (patches show whole images).
        checkpoint_dir: where to keep checkpoints (default: next to ``out``).
        synthesize: also synthesize, for every channel, an image that excites it
            (:meth:`~featuremaps.atlas.Atlas.synthesize`), shown in the channel's card and saved in the folder.
            Off by default: it costs about ``synth_steps`` forward and backward passes per batch of channels.
            Needs a model that takes RGB images; under ``torch.distributed`` the ranks share the channels.
        synth_steps: optimization steps per synthesized image.
        synth_size: synthesized image size in pixels.
        timeout: under ``torch.distributed``, the seconds a rank waits for the others where they meet (the end
            of the pass, the end of the synthesis); a rank that does not come in time is named in a
            :class:`~featuremaps.atlas.DistributedTimeoutError`.

    Returns:
        The :class:`~featuremaps.atlas.Atlas` (on every rank).

    Raises:
        FeatureMapsError: bad arguments, an empty folder, an ``out`` folder holding files featuremaps did not
            write (checked before any work), layers that differ between ranks, a rank that does not answer
            within ``timeout``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.atlas import build_atlas
        >>> images = torch.rand(6, 3, 8, 8)
        >>> atlas = build_atlas(nn.Sequential(nn.Conv2d(3, 2, 3)), images, layers="0", k=2, progress=False,
        ...                     synthesize=True, synth_steps=2, synth_size=8)
        >>> len(atlas.top_examples("0", channel=1)), atlas.num_images, atlas.synthesized("0", channel=1).size
        (2, 6, (8, 8))
    """
    model, preprocess = resolve(model, preprocess).known()  # its own preprocessing, or None: no guess
    _check_options(k, score, batch_size, receptive, checkpoint_every, synthesize, synth_steps, synth_size)
    timeout = check_timeout(timeout)
    rank, world = rank_world()
    if out is not None and rank == 0:
        check_output_folder(out)  # before any work: never a pass whose result cannot be written
    src = make_source(data, preprocess, batch_size, num_workers)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ckpt = _Checkpoints.open(out, checkpoint_dir, checkpoint_every, rank, world)
    if ckpt.file is not None:
        ckpt.fingerprint = _fingerprint(model, layers, src, k, score, rank, world)
    state = ckpt.restore(resume, device, k=k, n_items=len(src.dataset), rank=rank, world=world)

    run = _Pass(state, ckpt, position=state.position if state is not None else 0)
    with reporter(progress if rank == 0 else False, unit="images") as report:
        run.run(model, layers, src, AtlasReducer(score, k, device), report, rank, world)
    state = run.result(model, layers, src, k, device, checkpoint=synthesize)
    if world > 1:
        check_in("the end of the pass", timeout)
        state = merge_ranks(state, world)
    atlas = _to_atlas(state, model, src, k, score, preprocess, receptive)
    if synthesize:
        _synthesize(atlas, state, model, synth_steps, synth_size, preprocess, progress, timeout)
    _finish(atlas, ckpt, out, patch_size, rank, world, timeout)
    return atlas


def check_pass_options(batch_size: Any, receptive: Any, checkpoint_every: Any) -> None:
    """The options of a dataset pass that the atlas and concept discovery share (one-line errors)."""
    if batch_size is not None and batch_size < 1:
        raise FeatureMapsError(f"batch_size={batch_size} must be >= 1")
    if receptive not in RECEPTIVE_METHODS:
        raise FeatureMapsError(f"receptive={receptive!r} is not a method; use 'auto', 'chain', 'gradient' or 'none'")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise FeatureMapsError(f"checkpoint_every={checkpoint_every!r} must be >= 1 image, or None for no checkpoints")


def _check_options(
    k: Any, score: Any, batch_size: Any, receptive: Any, checkpoint_every: Any, synthesize: Any, synth_steps: Any,
    synth_size: Any,
) -> None:
    if score not in ("max", "mean"):
        raise FeatureMapsError(f"score={score!r} is not a score; use 'max' (spatial maximum) or 'mean'")
    if not isinstance(k, int) or k < 1:
        raise FeatureMapsError(f"k={k!r} must be a positive int: the number of examples kept per channel")
    check_pass_options(batch_size, receptive, checkpoint_every)
    if not isinstance(synthesize, bool):
        raise FeatureMapsError(f"synthesize={synthesize!r} must be True or False")
    if synthesize:
        check_synthesis(synth_steps, synth_size)


def _fingerprint(
    model: nn.Module, layers: LayerSelector, src: Source, k: int, score: str, rank: int, world: int
) -> str:
    """What a checkpoint must have been made with to be resumed: the data, the model, the options, the ranks."""
    return digest({
        "source": src.fingerprint, "model": model_signature(model),
        "layers": sorted(resolve_layers(model, layers).modules), "k": k, "score": score,
        "world": world, "rank": rank,
    })


# --------------------------------------------------------------------------- checkpoints


class _Checkpoints(CheckpointFiles):
    """The atlas's checkpoints: the shared files (:class:`~featuremaps.datapass.checkpoint.CheckpointFiles`)
    holding an :class:`AtlasState`."""

    def restore(self, resume: bool, device: torch.device, **expected: int) -> AtlasState | None:
        """The state to resume from (``resume``), after its checks; else None (and an old checkpoint is removed)."""
        if self.file is None:
            return None
        if not resume:
            discard_checkpoint(self.file)
            return None
        return load_checkpoint(self.file, self.fingerprint, lambda t, m: AtlasState.restore(t, m, device), **expected)

    def save(self, state: AtlasState) -> None:
        if self.file is not None:
            save_checkpoint(self.file, state.tensors(), state.meta(), self.fingerprint)


# --------------------------------------------------------------------------- the pass


@dataclass
class _Pass:
    """The loop over this rank's share, and what it has read so far (what an interrupt checkpoints)."""

    state: AtlasState | None
    ckpt: _Checkpoints
    position: int = 0  # items of this rank's share read (readable or not)
    images: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    last_saved: int = 0
    consistent: bool = True  # False while a batch is merged: an interrupt then must not be checkpointed
    inflight: Future[None] | None = None  # the batch the worker is merging

    def __post_init__(self) -> None:
        if self.state is not None:
            self.images, self.skipped = self.state.images, list(self.state.skipped)
        self.last_saved = self.position

    def run(
        self, model: nn.Module, layers: LayerSelector, src: Source, reducer: AtlasReducer, report: Progress,
        rank: int, world: int,
    ) -> None:
        """Read this rank's share from ``position`` on; on an interrupt, checkpoint what is consistent and re-raise.

        Each batch is merged into the state (top-k and statistics) after its forward (mostly in a worker
        thread while the next batch's forward runs, see :func:`_merged_beside`: the merges run one at a time,
        in order, and every save, interrupt or end of the loop waits for the one in flight).
        """
        n_items = len(src.dataset)
        loader = shard_loader(src, rank, world, self.position)
        if self.state is not None:
            reducer.tops = self.state.tops
        report("atlas", min(n_items, self.position * world), n_items)
        try:
            with warnings.catch_warnings(), ThreadPoolExecutor(1, thread_name_prefix="atlas-merge") as worker:
                warnings.filterwarnings("ignore", message=r"layers .* did not run")
                with FeatureExtractor(model, layers, reduce=reducer) as fx:
                    beside = _merged_beside(reducer.device)  # (decided once, as the reducer decides its paths)
                    for indices, batch, failed in loader:
                        self._merge(fx, reducer, layers, indices, batch, failed, worker if beside else None)
                        if self.state is not None and self.ckpt.due(self.position, self.last_saved):
                            self._join()
                            # saving adds the statistics' queued or pending batches to the state: an interrupt in there
                            # must not be followed by a save of the half-added state (the last file stays)
                            self.consistent = False
                            self.ckpt.save(self.state)
                            self.consistent = True
                            self.last_saved = self.position
                        report("atlas", min(n_items, self.position * world), n_items)
                    self._join()
        except BaseException:
            self._join(quiet=True)
            if self.consistent and self.state is not None and self.position > self.last_saved:
                self.ckpt.save(self.state)
            raise
        finally:
            reducer.release()

    def _join(self, quiet: bool = False) -> None:
        """Wait for the batch being merged in the worker; a merge that failed leaves the state inconsistent.

        ``quiet``: after another exception, record a failed merge (no checkpoint then) without raising it.
        A wait that is interrupted (Ctrl-C) keeps the merge in flight, for the handler to wait for again.
        """
        inflight = self.inflight
        if inflight is None:
            return
        try:
            inflight.result()
        except BaseException:
            if inflight.done():
                self.inflight = None
                if inflight.exception() is not None:
                    self.consistent = False  # a half-merged batch: never checkpointed
            elif quiet:
                self.consistent = False  # interrupted again while the merge runs: no checkpoint
            if not quiet:
                raise
            return
        self.inflight = None

    def result(
        self, model: nn.Module, layers: LayerSelector, src: Source, k: int, device: torch.device, checkpoint: bool,
    ) -> AtlasState:
        """The state after the pass (for a rank that read no image, its layer table); ``checkpoint``: save it."""
        if self.state is None:
            state = _discover(model, layers, src, k, device)
            state.skipped = self.skipped
            state.position = self.position
            return state
        if checkpoint and self.position > self.last_saved:
            self.ckpt.save(self.state)  # an interrupted synthesis does not cost the pass
        return self.state

    def _merge(
        self, fx: FeatureExtractor, reducer: AtlasReducer, layers: LayerSelector, indices: torch.Tensor, batch: Any,
        failed: list[tuple[int, str]], worker: ThreadPoolExecutor | None,
    ) -> None:
        """Run one batch and merge it into the state.

        With a ``worker`` (where :func:`_merged_beside` says so), the worker merges it (after the previous batch's merge) while
        the next forward runs; else it is merged right after its forward. Either way the batch is handed
        over (or merged) and counted with Ctrl-C held (see :func:`~featuremaps.datapass.interrupts_held`),
        and a checkpoint written on an interrupt first waits for the merge in flight, so it holds the batch.
        """
        n = int(indices.shape[0])
        if n:
            reducer.batch, reducer.pending = {}, {}
            reducer.indices = to_device(indices, reducer.device)
            x = first_item(batch)
            fx(x)  # (an interrupt in the forward leaves the state as it was after the last batch merged)
            self._join()  # (the previous batch's merge ran beside this forward)
        with interrupts_held():
            self.consistent = False
            if n:
                taken, reduced = reducer.take(), reducer.batch
                if self.state is None:
                    self.state = new_state(reducer, layers)
                    if isinstance(x, torch.Tensor):
                        self.state.input_shape = tuple(int(s) for s in x.shape[1:])
                if worker is not None:
                    self.inflight = worker.submit(_merge_beside, reducer, taken, self.state, reduced)
                else:
                    _merge_batch(reducer, taken, self.state, reduced)
            reducer.batch = {}
            self.images += n
            self.skipped.extend(failed)
            self.position += n + len(failed)
            if self.state is not None:
                self.state.images, self.state.position, self.state.skipped = self.images, self.position, self.skipped
            self.consistent = True


def _merged_beside(device: torch.device) -> bool:
    """Whether batches are merged in the worker thread, beside the next forward.

    On accelerators, where both only queue work on the device. On the CPU where the atlas's C library merges
    (and ``FEATUREMAPS_FUSED`` is not ``0``): its calls release the interpreter and take one thread there
    (:func:`.native.one_thread`), so the merge fills the moments the forward leaves a core idle (between
    operations, in page faults, in one-thread operations) instead of adding to the time per batch.
    """
    if asynchronous(device):
        return True
    return device.type == "cpu" and fused_mode() != "0" and native.function("fm_topk_merge") is not None


def _merge_batch(
    reducer: AtlasReducer, taken: tuple[dict[str, Any], torch.Tensor | None], state: AtlasState,
    reduced: dict[str, Any],
) -> None:
    """Merge one batch into the top-k and the statistics."""
    reducer.merge(taken)
    state.update(reduced)


def _merge_beside(
    reducer: AtlasReducer, taken: tuple[dict[str, Any], torch.Tensor | None], state: AtlasState,
    reduced: dict[str, Any],
) -> None:
    """:func:`_merge_batch` in the worker thread: the C library's calls on one thread, beside the forward's."""
    with native.one_thread():
        _merge_batch(reducer, taken, state, reduced)


def _discover(model: nn.Module, layers: LayerSelector, src: Source, k: int, device: torch.device) -> AtlasState:
    """The layer table from one forward on the first readable item (a rank with no images needs it)."""
    x = first_readable(src)
    if x is None:
        raise FeatureMapsError(
            "no readable image in the dataset; check the folder or dataset (every item failed to load)"
        )
    reducer = AtlasReducer("max", k, device)  # no indices: the top-k are not touched
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"layers .* did not run")
        with FeatureExtractor(model, layers, reduce=reducer) as fx:
            fx(x)
    state = new_state(reducer, layers)
    if isinstance(x, torch.Tensor):
        state.input_shape = tuple(int(s) for s in x.shape[1:])
    return state


# --------------------------------------------------------------------------- after the pass


def _to_atlas(
    state: AtlasState, model: nn.Module, src: Source, k: int, score: str, preprocess: Any, receptive: str
) -> Atlas:
    stats = state.stats.result()
    fields: dict[str, Any] = {}
    shape = state.input_shape
    if shape is not None and len(shape) == 3 and receptive != "none":
        spatial = {la.name: la.module_name for la in state.layers if len(la.spatial) in (0, 2)}
        if spatial:
            fields = receptive_fields(model, spatial, shape, method=receptive)
    table: list[AtlasLayer] = []
    data: dict[str, LayerData] = {}
    offset = 0
    for la in state.layers:
        top = state.tops[la.name]
        index = top.index.cpu().numpy().copy()
        index[index == EMPTY_INDEX] = -1
        layer = AtlasLayer(la.name, la.module_name, la.module_type, la.channels, la.spatial, la.stride,
                           fields.get(la.name))
        table.append(layer)
        data[la.name] = LayerData(index, top.score.cpu().numpy(), top.y.cpu().numpy(), top.x.cpu().numpy(),
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



def _synthesize(
    atlas: Atlas, state: AtlasState, model: nn.Module, steps: int, size: int, preprocess: Any,
    progress: ProgressArg, timeout: float,
) -> None:
    shape = state.input_shape
    if shape is not None and len(shape) == 3 and shape[0] == 3:
        atlas.synthesize(model, steps=steps, size=size, preprocess=preprocess, progress=progress, timeout=timeout)
    else:
        warnings.warn(
            f"synthesize=True needs a model that takes RGB images (N, 3, H, W); this one takes "
            f"{('(N, ' + ', '.join(str(v) for v in shape) + ')') if shape else 'other inputs'}: "
            "no images synthesized", UserWarning, stacklevel=3,
        )


def _finish(
    atlas: Atlas, ckpt: _Checkpoints, out: str | os.PathLike[str] | None, patch_size: int, rank: int, world: int,
    timeout: float,
) -> None:
    """Save the atlas (rank 0) and remove the checkpoints, once every rank is done."""
    if world > 1:
        if rank != 0 and ckpt.file is not None:
            ckpt.file.unlink(missing_ok=True)  # this rank's share is in the merged state now
        check_in("the end of the atlas", timeout)  # (then rank 0 removes the checkpoint folder, emptied)
    if rank == 0:
        # the other ranks do not wait for this save (however long it takes); their checkpoints are
        # gone, so a save that fails costs them their share of a rerun, never a wrong atlas
        if out is not None:
            atlas.save(out, patch_size=patch_size)
        ckpt.remove()
