"""``discover_concepts``: one streaming pass, a factorization, and the concepts' top examples.

What it guarantees:

* **One pass, flat memory.** The capture engine runs over the data (the same
  sources as :func:`~featuremaps.atlas.build_atlas`: an image folder, a
  Dataset or a DataLoader) with a reducer that offers each batch's map of the
  layer to a :class:`~.nmf.PositionSample` and drops it: memory is
  ``sample_size x channels x 4`` bytes (64 MiB by default) whatever the
  dataset's size.
* **The same concepts on one process or many.** The sample is chosen by a hash
  of ``(dataset index, position)``, so under ``torch.distributed`` the ranks'
  samples merge into exactly the single-process one; every rank then runs the
  same deterministic NMF (:func:`~.nmf.nmf`).
* **Signed layers**: the factorization sees ``max(A, 0)`` (the positive part
  of the activations, as after a ReLU); ``Concepts.negative_share`` says how
  much of the sampled activation mass was negative and so left out. Pick the
  activation after a convolution to keep it at 0.
* **Top examples** come from a second pass: the atlas
  (:func:`~featuremaps.atlas.build_atlas`) run on the concept coefficients,
  so each concept gets the atlas's exact top-k, patches and statistics.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import torch
from torch import nn

from .._outdir import check_output_folder
from .._progress import Progress, ProgressArg, reporter
from ..atlas.build import build_atlas, check_pass_options
from ..atlas.receptive import receptive_fields
from ..capture import FeatureExtractor
from ..datapass import (
    DEFAULT_TIMEOUT,
    Source,
    all_gather,
    check_in,
    check_timeout,
    comm_device,
    first_item,
    gather_json,
    make_source,
    rank_world,
    shard_loader,
    to_device,
)
from ..errors import FeatureMapsError
from ..layers import LayerSelector
from ..maps import LayerInfo
from ..models import resolve
from ..datapass.checkpoint import CheckpointFiles, discard_checkpoint
from .checkpoint import CONCEPTS_CHECKPOINT_FORMAT, PassProgress, fingerprint, restore_pass, save_pass
from .concepts import Concepts, concept_maps
from .nmf import PositionSample, nmf

__all__ = ["discover_concepts", "DEFAULT_SAMPLE_BYTES"]

DEFAULT_SAMPLE_BYTES = 64 << 20
"""The default memory for the sample of activation vectors (64 MiB)."""


class _SampleReducer:
    """The capture reducer of the pass: stages the layer's map of a batch; :meth:`commit` offers it to the sample.

    Staged, so that an interrupt inside a forward leaves the sample as it was
    after the last batch (what a checkpoint then keeps).
    """

    name = "concepts"

    def __init__(self, sample_size: int | None, device: torch.device) -> None:
        self.sample_size = sample_size
        self.device = device
        self.sample: PositionSample | None = None
        self.info: LayerInfo | None = None
        self.indices: torch.Tensor | None = None
        self.names: list[str] = []
        self.pending: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor, info: LayerInfo) -> None:
        if info.name not in self.names:
            self.names.append(info.name)
        if info.channels is None or t.ndim < 2:
            return None
        if t.ndim - 2 > 2:
            raise FeatureMapsError(
                f"layer {info.name!r} has {t.ndim - 2}-D maps {tuple(t.shape)}; concepts support images, "
                "sequences and vectors (up to 2 spatial dimensions): choose another layer"
            )
        if self.info is not None and info.name != self.info.name:
            return None  # (reported after the forward: one layer only)
        if self.pending is None:  # (the first map of the layer in this forward)
            self.pending = t.detach().reshape(t.shape[0], t.shape[1], -1)
        self.info = info
        return None

    def commit(self) -> None:
        """Offer the staged map to the sample (made on the first one)."""
        flat, self.pending = self.pending, None
        if flat is None or self.indices is None:
            return
        if self.sample is None:
            c = int(flat.shape[1])
            self.sample = PositionSample(_capacity(self.sample_size, c), c, self.device)
        self.sample.update(flat, self.indices)


def _capacity(sample_size: int | None, channels: int) -> int:
    if sample_size is not None:
        return int(sample_size)
    return max(256, min(100_000, DEFAULT_SAMPLE_BYTES // (4 * max(channels, 1))))


class _ConceptProbe(nn.Module):
    """``model`` whose output is the concept coefficients of one layer (captured as ``concepts``).

    Used for the second pass only: the atlas captures the ``concepts``
    module, whose input is ``(N, K, H, W)`` (1-D maps as ``H = 1``, vectors
    as ``1 x 1``). The layer is read with the capture engine (hooks only
    during each forward).
    """

    def __init__(self, model: nn.Module, info: LayerInfo, components: torch.Tensor, layouts: Any) -> None:
        super().__init__()
        self.model = model
        self.concepts = nn.Identity()
        self._info = info
        self._components = components
        self._layouts = layouts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found: list[torch.Tensor] = []

        def reduce(t: torch.Tensor, info: LayerInfo) -> None:
            if info.name == self._info.name and not found:
                found.append(concept_maps(t.detach(), self._components.to(t.device)))
            return None

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"layers .* did not run")
            with FeatureExtractor(self.model, self._info.module_name, reduce=reduce, layouts=self._layouts) as fx:
                fx(x)
        if not found:
            raise FeatureMapsError(f"layer {self._info.name!r} did not run in this forward")
        u = found[0]
        if u.ndim == 2:
            u = u[:, :, None, None]
        elif u.ndim == 3:
            u = u[:, :, None, :]
        return self.concepts(u)


def _run_pass(
    model: nn.Module, layer: LayerSelector, src: Source, sample_size: int | None, device: torch.device,
    report: Progress, layouts: Any, files: CheckpointFiles, resume: bool,
) -> tuple[_SampleReducer, int, list[tuple[int, str]], tuple[int, ...] | None]:
    """The first pass: every item of this rank's share offered to the sample (progress: the ``"concepts"`` stage).

    From a checkpoint when ``resume`` finds one of this run; one is written
    every ``files.every`` items, on an interrupt (when the sample is whole)
    and at the end.
    """
    rank, world = rank_world()
    n_items = len(src.dataset)
    reducer = _SampleReducer(sample_size, device)
    done = _resume(files, resume, reducer, device, n_items, rank, world)
    consistent = True  # False while a batch is merged: an interrupt then must not be checkpointed
    report("concepts", min(n_items, done.position * world), n_items)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"layers .* did not run")
            with FeatureExtractor(model, layer, reduce=reducer, layouts=layouts) as fx:
                for indices, batch, failed in shard_loader(src, rank, world, done.position):
                    n = int(indices.shape[0])
                    if n:
                        reducer.indices = to_device(indices, device)
                        x = first_item(batch)
                        fx(x)  # (staged: an interrupt here leaves the sample as after the last batch)
                        if done.shape is None and isinstance(x, torch.Tensor):
                            done.shape = tuple(int(s) for s in x.shape[1:])
                        _check_one_layer(reducer, layer)
                    consistent = False
                    reducer.commit()
                    done.images += n
                    done.skipped.extend(failed)
                    done.position += n + len(failed)
                    consistent = True
                    if files.due(done.position, done.last_saved):
                        _save(files, reducer, done)
                    report("concepts", min(n_items, done.position * world), n_items)
    except BaseException:
        if consistent and done.position > done.last_saved:
            _save(files, reducer, done)
        raise
    if done.position > done.last_saved:
        _save(files, reducer, done)  # the factorization and the examples' pass follow: keep what was read
    return reducer, done.images, done.skipped, done.shape


def _resume(
    files: CheckpointFiles, resume: bool, reducer: _SampleReducer, device: torch.device, n_items: int, rank: int,
    world: int,
) -> PassProgress:
    """The progress to start from: a sound checkpoint of this run (its sample put in ``reducer``), else none."""
    if files.file is None:
        return PassProgress()
    if not resume:
        discard_checkpoint(files.file, CONCEPTS_CHECKPOINT_FORMAT)
        return PassProgress()
    found = restore_pass(files, device, n_items=n_items, rank=rank, world=world)
    if found is None:
        return PassProgress()
    reducer.sample, reducer.info, reducer.names, done = found
    return done


def _save(files: CheckpointFiles, reducer: _SampleReducer, done: PassProgress) -> None:
    save_pass(files, reducer.sample, reducer.info, reducer.names, done)
    done.last_saved = done.position


def _check_one_layer(reducer: _SampleReducer, layer: LayerSelector) -> None:
    if reducer.info is None:
        raise FeatureMapsError(
            f"layer={layer!r} captured no map with a channel axis; choose a layer whose output has channels "
            "(see fm.list_layers(model, x))"
        )
    if len(reducer.names) > 1:
        raise FeatureMapsError(
            f"layer={layer!r} selects {len(reducer.names)} outputs ({', '.join(reducer.names[:4])}"
            f"{', ...' if len(reducer.names) > 4 else ''}); concepts are found in one layer: pass one name"
        )


def _merge_ranks(
    reducer: _SampleReducer, images: int, skipped: list[tuple[int, str]], shape: tuple[int, ...] | None,
    device: torch.device, timeout: float,
) -> tuple[PositionSample, LayerInfo, int, list[tuple[int, str]], tuple[int, ...] | None]:
    """Every rank's sample, merged (exactly the one-process sample), with the counts and the layer."""
    _, world = rank_world()
    if world == 1:
        if reducer.sample is None or reducer.info is None:
            raise FeatureMapsError("no readable image in the dataset; check the folder or dataset")
        return reducer.sample, reducer.info, images, skipped, shape
    check_in("the end of the concept pass", timeout)
    comm = comm_device(device)
    info = reducer.info
    mine = {"info": info.to_json() if info is not None else None, "images": images,
            "skipped": [list(s) for s in skipped], "shape": list(shape) if shape is not None else None,
            "capacity": reducer.sample.capacity if reducer.sample is not None else None,
            "channels": reducer.sample.channels if reducer.sample is not None else None}
    metas = gather_json(mine, comm, world)
    known = [m for m in metas if m["info"] is not None]
    if not known:
        raise FeatureMapsError("no readable image in the dataset; check the folder or dataset")
    first = known[0]
    if any((m["info"]["name"], m["channels"]) != (first["info"]["name"], first["channels"]) for m in known):
        raise FeatureMapsError(
            "the processes captured different layers (the model or --layer differs between them); run every "
            "process with the same model and layer"
        )
    sample = reducer.sample or PositionSample(int(first["capacity"]), int(first["channels"]), device)
    merged: PositionSample | None = None
    states = {key: all_gather(v, comm, world) for key, v in sample.state().items()}
    for r in range(world):
        part = PositionSample.from_state({key: v[r] for key, v in states.items()}, device)
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise FeatureMapsError(f"world size {world} has no processes")
    merged_info = info if info is not None else LayerInfo.from_json(first["info"])
    all_skipped = sorted((int(i), str(r)) for m in metas for i, r in m["skipped"])
    shapes = [tuple(m["shape"]) for m in metas if m["shape"] is not None]
    return merged, merged_info, sum(int(m["images"]) for m in metas), all_skipped, shape or (shapes[0] if shapes
                                                                                           else None)


def discover_concepts(
    model: nn.Module | Any, data: Any, layer: LayerSelector, n_concepts: int = 10, *, method: str = "nmf",
    top_k: int = 9, examples: bool = True, sample_size: int | None = None, iters: int = 200,
    batch_size: int | None = None, preprocess: Any = None, num_workers: int = 0, receptive: str = "auto",
    layouts: Any = None, progress: ProgressArg = True, out: str | os.PathLike[str] | None = None,
    patch_size: int = 64, timeout: float = DEFAULT_TIMEOUT, checkpoint_every: int | None = 1000,
    resume: bool = True, checkpoint_dir: str | os.PathLike[str] | None = None,
) -> Concepts:
    """Find ``n_concepts`` directions in ``layer``'s channel space that the data's activations are made of.

    The activations ``A`` (one row per map position, one column per channel,
    positive part) of a uniform sample of positions over the whole dataset
    are factored as ``A ~ U @ W`` with ``U, W >= 0`` (non-negative matrix
    factorization, as in CRAFT, Fel et al., CVPR 2023): each row of ``W``
    (``Concepts.components``) is a concept, a non-negative mix of channels;
    ``U`` says how much of each concept is present at each position. Then,
    for each concept, the ``top_k`` images (and patches) where it is
    strongest (a second pass: the atlas's top-k on the coefficients).

    Args:
        model: the model, or the :class:`~featuremaps.LoadedModel` from
            :func:`~featuremaps.load_model` (which brings its preprocessing).
        data: an image folder, a map-style ``Dataset`` or a ``DataLoader``,
            as for :func:`~featuremaps.atlas.build_atlas`.
        layer: one layer (a name or selector that picks one output).
        n_concepts: how many concepts (``K``).
        method: ``"nmf"`` (the only one).
        top_k: examples kept per concept.
        examples: run the second pass for the concepts' top examples.
        sample_size: activation vectors (positions) kept for the
            factorization; default: as many as fit in 64 MiB (at most
            100,000).
        iters: NMF sweeps at most.
        batch_size: images per forward (default: the loader's, else 32).
        preprocess: the model's preprocessing, for folders and PIL images.
        num_workers: DataLoader worker processes.
        receptive: how patches are sized (``"auto"``, ``"chain"``,
            ``"gradient"``, ``"none"``; see :func:`~featuremaps.atlas.build_atlas`).
        layouts: declared layouts for the capture engine.
        progress: ``True`` for progress bars with images/s, ``False`` for
            none, or a callable ``progress(stage, done, total)`` called with
            the ``"concepts"`` stage (the first pass, images read out of the
            dataset's) and the ``"concept examples"`` stage (the second);
            rank 0 only.
        out: also save the concepts there (rank 0; see :meth:`Concepts.save`).
        patch_size: patch thumbnail size when saving.
        timeout: under ``torch.distributed``, seconds a rank waits for the others.
        checkpoint_every: save the first pass's sample every this many
            images (``None``: no checkpoints); it is also saved on an
            interrupt and at the end of the pass. Checkpoints live next to ``out`` (in
            ``.<name>.partial``) or in ``checkpoint_dir``; without either,
            there are none. They are removed once the concepts are done.
        resume: continue from a checkpoint made with the same data, model,
            layer and sample size (a damaged one is set aside, renamed, with
            one warning, and the pass starts over). The resumed pass ends
            with exactly the sample, and so the concepts, of an
            uninterrupted one.
        checkpoint_dir: where to keep checkpoints (default: next to ``out``).

    Returns:
        The :class:`~featuremaps.concepts.Concepts` (on every rank).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
        >>> concepts = discover_concepts(net, torch.rand(8, 3, 10, 10), layer="1", n_concepts=3, progress=False)
        >>> concepts.components.shape, bool((concepts.components >= 0).all())
        (torch.Size([3, 6]), True)
        >>> len(concepts.top_examples(0))
        8
    """
    model, preprocess = resolve(model, preprocess).known()  # its own preprocessing, or None: no guess
    _check_options(layer, n_concepts, method, top_k, sample_size, iters, batch_size, receptive, checkpoint_every)
    timeout = check_timeout(timeout)
    rank, world = rank_world()
    if out is not None and rank == 0:
        check_output_folder(out)  # before any work
    src = make_source(data, preprocess, batch_size, num_workers, "discover_concepts")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    files = _checkpoints(out, checkpoint_dir, checkpoint_every, (model, layer, src, sample_size, layouts), rank, world)

    with reporter(progress if rank == 0 else False, unit="images") as report:
        reducer, images, skipped, shape = _run_pass(model, layer, src, sample_size, device, report, layouts, files,
                                                    resume)
        sample, info, images, skipped, shape = _merge_ranks(reducer, images, skipped, shape, device, timeout)
        components, error, negative_share = _factorize(sample, info, n_concepts, iters, device)
        concepts = _make_concepts(model, preprocess, src, sample, info, images, skipped, shape, layouts,
                                  (components, error, negative_share))
        if examples:
            concepts.atlas = _top_examples(
                model, data, concepts, shape, top_k=top_k, batch_size=batch_size, preprocess=preprocess,
                num_workers=num_workers, receptive=receptive, timeout=timeout,
                progress=lambda stage, done, total: report("concept examples", done, total),
            )
    if out is not None and rank == 0:
        concepts.save(out, patch_size=patch_size)
    files.remove()
    return concepts


def _checkpoints(
    out: str | os.PathLike[str] | None, checkpoint_dir: str | os.PathLike[str] | None, every: int | None,
    run: tuple[nn.Module, Any, Source, int | None, Any], rank: int, world: int,
) -> CheckpointFiles:
    """This rank's checkpoint files (none when ``every`` is ``None``), with the run's fingerprint."""
    files = CheckpointFiles.open(out if every else None, checkpoint_dir if every else None, every, rank, world)
    if files.file is not None:
        files.fingerprint = fingerprint(*run, rank, world)
    return files


def _make_concepts(
    model: nn.Module, preprocess: Any, src: Source, sample: PositionSample, info: LayerInfo, images: int,
    skipped: list[tuple[int, str]], shape: tuple[int, ...] | None, layouts: Any,
    found: tuple[torch.Tensor, float, float],
) -> Concepts:
    """The :class:`Concepts` of the factorization ``found`` (components, relative error, negative share)."""
    card = getattr(preprocess, "card", None)
    components, error, negative_share = found
    return Concepts(
        components=components, layer=info.name, info=info, num_images=images, positions=sample.seen,
        sample_size=int(sample.rows.shape[0]), relative_error=error, negative_share=negative_share,
        model=str(getattr(card, "name", None) or type(model).__name__),
        input_size=(int(shape[1]), int(shape[2])) if shape is not None and len(shape) == 3 else None,
        skipped=[((src.names[i] if src.names is not None else f"#{i}"), r) for i, r in skipped],
        root=src.root, layouts=layouts,
    )


def _check_options(
    layer: Any, n_concepts: Any, method: Any, top_k: Any, sample_size: Any, iters: Any, batch_size: Any,
    receptive: Any, checkpoint_every: Any = None,
) -> None:
    if method != "nmf":
        raise FeatureMapsError(f"method={method!r} is not a concept method; use 'nmf'")
    if layer is None or (isinstance(layer, str) and layer in ("", "auto")):
        raise FeatureMapsError(
            f"layer={layer!r}: concepts need one named layer; pass its name (see fm.list_layers(model, x))"
        )
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise FeatureMapsError(f"n_concepts={n_concepts!r} must be a positive int: the number of concepts")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise FeatureMapsError(f"top_k={top_k!r} must be a positive int: the examples kept per concept")
    if sample_size is not None and (isinstance(sample_size, bool) or not isinstance(sample_size, int)
                                    or sample_size < n_concepts):
        raise FeatureMapsError(f"sample_size={sample_size!r} must be an int >= n_concepts ({n_concepts})")
    if not isinstance(iters, int) or iters < 1:
        raise FeatureMapsError(f"iters={iters!r} must be a positive int: the most NMF sweeps")
    check_pass_options(batch_size, receptive, checkpoint_every)


def _factorize(
    sample: PositionSample, info: LayerInfo, n_concepts: int, iters: int, device: torch.device
) -> tuple[torch.Tensor, float, float]:
    """``(components, relative error, negative share)``: NMF of the sampled activations' positive part."""
    rows = sample.rows
    negative = float(rows.clamp(max=0).abs().double().sum())
    mass = float(rows.abs().double().sum())
    x = rows.clamp(min=0)
    if n_concepts > min(x.shape):
        raise FeatureMapsError(
            f"n_concepts={n_concepts} is more than the layer's {info.channels} channels or the "
            f"{int(x.shape[0])} sampled positions; choose at most {min(x.shape)}"
        )
    components, _, error = nmf(x.to(device), n_concepts, iters=iters)
    return components.float().cpu(), error, negative / mass if mass > 0 else 0.0


def _top_examples(
    model: nn.Module, data: Any, concepts: Concepts, shape: tuple[int, ...] | None, *, top_k: int,
    batch_size: int | None, preprocess: Any, num_workers: int, receptive: str, progress: ProgressArg,
    timeout: float,
) -> Any:
    """The second pass: the atlas of the concept coefficients, its patches sized by the layer's receptive field."""
    info = concepts.info
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = _ConceptProbe(model, info, concepts.components.to(device), concepts.layouts)
    atlas = build_atlas(probe, data, layers="concepts", k=top_k, batch_size=batch_size, preprocess=preprocess,
                        num_workers=num_workers, checkpoint_every=None, progress=progress, receptive="none",
                        timeout=timeout)
    fields: dict[str, Any] = {}
    if receptive != "none" and shape is not None and len(shape) == 3 and len(info.spatial) in (0, 2):
        fields = receptive_fields(model, {info.name: info.module_name}, shape, method=receptive)
    table = atlas.layer_table[0]
    atlas.layer_table[0] = dataclasses.replace(
        table, receptive_field=fields.get(info.name), module_type=f"concepts of {info.name} ({info.module_type})")
    atlas.model = concepts.model
    atlas.unit = "concept"  # its pages say "concept 3", not "channel 3"
    return atlas
