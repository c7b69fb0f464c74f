"""The data a dataset pass reads: image folders, Datasets and DataLoaders, as indexed batches.

Shared by :func:`~featuremaps.atlas.build_atlas` and
:func:`~featuremaps.concepts.discover_concepts` (:func:`make_source`, then
:func:`shard_loader`). What it guarantees:

* every item is read once, with its dataset index; under
  ``torch.distributed`` each rank reads its own shard, without the padding a
  ``DistributedSampler`` adds (:class:`ShardSampler`);
* an unreadable item (featuremaps' load errors) is skipped and listed, never
  raised (:class:`Indexed`, :class:`Collate`);
* folders and PIL images get the model's preprocessing (on the CPU, in the
  loader), and every source has a viewer that shows an item as the model sees
  it (for patches).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from ..errors import FeatureMapsError, ImageLoadError
from ..io import load_image
from ..models import Preprocess
from .device import asynchronous

__all__ = [
    "IMAGE_SUFFIXES", "Collate", "Indexed", "ShardSampler", "Source", "digest", "first_item", "first_readable",
    "image_files", "make_source", "shard_loader", "to_device",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""File suffixes (case-insensitive) read from image folders."""


def image_files(root: str | os.PathLike[str]) -> list[str]:
    """The image files under ``root``, recursively, as sorted POSIX paths relative to it.

    Hidden files and folders (names starting with ``.``) are left out.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a/c.JPG", "notes.txt", ".hidden.png"):
        ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"")
        >>> image_files(root)
        ['a/c.JPG', 'b.png']
    """
    base = Path(root)
    if not base.is_dir():
        raise FeatureMapsError(f"image folder {str(base)!r} does not exist or is not a folder; pass a folder of images")
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append((Path(dirpath) / name).relative_to(base).as_posix())
    return sorted(found)


class _FolderImages(Dataset):
    """Image files read with the model's preprocessing; unreadable files become errors, not exceptions."""

    def __init__(self, root: Path, names: list[str], preprocess: Callable[..., Any]) -> None:
        self.root = root
        self.names = names
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Any:
        try:
            img = load_image(self.root / self.names[i])
        except ImageLoadError as exc:
            return _Failed(str(exc).splitlines()[0] if str(exc) else "unreadable")
        x = self.preprocess(img)
        return x[0] if isinstance(x, torch.Tensor) and x.ndim == 4 else x


@dataclass
class _Failed:
    reason: str


class Indexed(Dataset):
    """``i -> (i, item)``, catching featuremaps' load errors so bad items are skipped and listed."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Any] | None = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            item = self.dataset[i]
        except FeatureMapsError as exc:
            return i, _Failed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if self.transform is not None and not isinstance(item, _Failed):
            item = self.transform(item)
        return i, item


class Collate:
    """Collates ``(index, item)`` pairs into ``(indices, batch, failures)``, leaving failures out."""

    def __init__(self, collate: Callable[[list[Any]], Any] | None) -> None:
        self.collate = collate

    def __call__(self, pairs: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any, list[tuple[int, str]]]:
        good = [(i, item) for i, item in pairs if not isinstance(item, _Failed)]
        failed = [(i, item.reason) for i, item in pairs if isinstance(item, _Failed)]
        indices = torch.tensor([i for i, _ in good], dtype=torch.int64)
        if not good:
            return indices, None, failed
        collate = self.collate or default_collate
        return indices, collate([item for _, item in good]), failed


class ShardSampler(Sampler[int]):
    """This rank's indices from a DistributedSampler, without its padding, from ``start`` on."""

    def __init__(self, length: int, rank: int, world: int, start: int) -> None:
        self.inner: DistributedSampler[int] = DistributedSampler(
            range(length), num_replicas=world, rank=rank, shuffle=False, drop_last=False  # type: ignore[arg-type]
        )
        # DistributedSampler repeats the first indices so that every rank gets as many; those
        # repeats are the tail of each rank's list: keep only this rank's real share.
        self.real = len(range(rank, length, world))
        self.start = min(start, self.real)

    def __iter__(self) -> Iterator[int]:
        return islice(iter(self.inner), self.start, self.real)

    def __len__(self) -> int:
        return self.real - self.start


@dataclass
class Source:
    """What a pass reads (from :func:`make_source`): the items, how to load them, and how to show one."""

    dataset: Any  # map-style dataset of items (tensors / tuples) or _Failed
    transform: Callable[[Any], Any] | None
    collate: Callable[[list[Any]], Any] | None
    batch_size: int
    num_workers: int
    pin_memory: bool
    names: list[str] | None
    root: str | None
    viewer: Callable[[int], Any] | None
    fingerprint: dict[str, Any]


def to_device(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch's dataset indices on ``device``, without making the host wait for an accelerator.

    A batch of this rank's shard is an arithmetic progression (unless an
    unreadable item was left out), which is made on the device rather than
    copied there: a copy from ordinary memory waits for the device's queue.
    """
    if not asynchronous(device):
        return indices.to(device)
    progression = _progression(indices.tolist())
    if progression is not None:
        first, step, n = progression
        return torch.arange(n, device=device) * step + first
    return indices.to(device)


def _progression(values: list[int]) -> tuple[int, int, int] | None:
    """``(first, step, length)`` when ``values`` is an increasing arithmetic progression, else None."""
    if len(values) < 2:
        return (values[0], 1, 1) if values else None
    first, step = values[0], values[1] - values[0]
    if step > 0 and values == list(range(first, first + step * len(values), step)):
        return first, step, len(values)
    return None


def first_item(item: Any) -> Any:
    """The model input of a batch or item: its first element (a tuple's, or a mapping's first tensor).

    Example:
        >>> first_item(("x", "label")), first_item("x")
        ('x', 'x')
    """
    if isinstance(item, (tuple, list)) and item:
        return item[0]
    if isinstance(item, Mapping):
        for v in item.values():
            if isinstance(v, torch.Tensor):
                return v
    return item


def _cpu_preprocess(preprocess: Any) -> Any:
    if isinstance(preprocess, Preprocess) and preprocess.device.type != "cpu":
        return Preprocess(preprocess.card, device="cpu")
    return preprocess


class _PilTransform:
    """Applies the model's preprocessing to PIL images that a dataset returns."""

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __call__(self, item: Any) -> Any:
        from PIL import Image

        def conv(v: Any) -> Any:
            if isinstance(v, Image.Image):
                x = self.preprocess(v)
                return x[0] if isinstance(x, torch.Tensor) and x.ndim == 4 else x
            return v

        if isinstance(item, tuple):
            return tuple(conv(v) if i == 0 else v for i, v in enumerate(item))
        if isinstance(item, list):
            return [conv(v) if i == 0 else v for i, v in enumerate(item)]
        return conv(item)


def _tensor_view(x: torch.Tensor, preprocess: Any) -> Any:
    from PIL import Image

    if x.ndim != 3 or x.shape[0] not in (1, 3):
        return None
    if preprocess is not None and hasattr(preprocess, "denormalize") and x.shape[0] == 3:
        return Image.fromarray(preprocess.denormalize(x)[0])
    t = x.detach().float().cpu()
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        t = (t - lo) / (hi - lo) if hi > lo else t * 0
    arr = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")


class _DatasetViewer:
    def __init__(self, dataset: Any, preprocess: Any) -> None:
        self.dataset = dataset
        self.preprocess = preprocess

    def __call__(self, index: int) -> Any:
        from PIL import Image

        try:
            item = first_item(self.dataset[index])
        except FeatureMapsError:
            return None
        if isinstance(item, Image.Image):
            return self.preprocess.view(item) if hasattr(self.preprocess, "view") else item.convert("RGB")
        if isinstance(item, torch.Tensor):
            return _tensor_view(item, self.preprocess)
        return None


class _FolderViewer:
    def __init__(self, root: Path, names: list[str], preprocess: Any) -> None:
        self.root = root
        self.names = names
        self.preprocess = preprocess

    def __call__(self, index: int) -> Any:
        try:
            img = load_image(self.root / self.names[index])
        except (ImageLoadError, IndexError):
            return None
        if hasattr(self.preprocess, "view"):
            return self.preprocess.view(img)
        return img


def make_source(
    data: Any, preprocess: Any, batch_size: int | None, num_workers: int, what: str = "build_atlas"
) -> Source:
    """The items, loading options and viewer of ``data`` (an image folder, a Dataset or a DataLoader)."""
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        names = image_files(root)
        if not names:
            raise FeatureMapsError(
                f"no images found in {str(root)!r}; it should hold image files ({', '.join(IMAGE_SUFFIXES[:6])}, ...)"
            )
        if preprocess is None:
            raise FeatureMapsError(
                "reading an image folder needs the model's preprocessing: pass preprocess= (for example "
                "featuremaps.models.preprocess_for(model, guess=True): ImageNet normalization at 224 px)"
            )
        prep = _cpu_preprocess(preprocess)
        stats = []
        for n in names:
            try:
                st = (root / n).stat()
                stats.append([n, st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append([n, -1, -1])
        return Source(
            dataset=_FolderImages(root, names, prep), transform=None, collate=None,
            batch_size=batch_size or 32, num_workers=num_workers, pin_memory=False, names=names,
            root=str(root.resolve()), viewer=_FolderViewer(root, names, preprocess),
            fingerprint={"folder": str(root.resolve()), "files": digest(stats), "preprocess": repr(preprocess)},
        )
    collate = None
    pin = False
    if isinstance(data, DataLoader):
        loader = data
        data = loader.dataset
        batch_size = batch_size or loader.batch_size or 32
        num_workers = num_workers or loader.num_workers
        pin = bool(loader.pin_memory)
        if loader.collate_fn is not default_collate and getattr(loader.collate_fn, "__name__", "") != "default_collate":
            collate = loader.collate_fn
    if isinstance(data, torch.utils.data.IterableDataset):
        raise FeatureMapsError(
            f"{what} needs a map-style dataset (with __len__ and __getitem__), got the iterable "
            f"{type(data).__name__}; wrap its items in a list or a map-style Dataset"
        )
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise FeatureMapsError(
            f"{what} reads an image folder, a torch Dataset or a DataLoader, got {type(data).__name__}; "
            "pass one of those"
        )
    transform = _PilTransform(_cpu_preprocess(preprocess)) if preprocess is not None else None
    return Source(
        dataset=data, transform=transform, collate=collate, batch_size=batch_size or 32,
        num_workers=num_workers, pin_memory=pin, names=None, root=None,
        viewer=_DatasetViewer(data, preprocess),
        fingerprint={"dataset": type(data).__name__, "length": len(data)},
    )


def digest(obj: Any) -> str:
    """The SHA-256 of ``obj`` as sorted JSON (a fingerprint that survives a restart).

    Example:
        >>> digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def shard_loader(src: Source, rank: int, world: int, start: int = 0) -> DataLoader:
    """This rank's share of ``src``, from its ``start``-th item on, as ``(indices, batch, failures)`` batches.

    ``indices`` are the dataset indices of the batch's readable items,
    ``failures`` the ``(index, reason)`` of those that could not be read (left
    out of ``batch``, which is ``None`` when none was readable).

    Example:
        >>> import torch
        >>> src = make_source(torch.arange(5.0).reshape(5, 1), None, 2, 0)
        >>> [indices.tolist() for indices, _, _ in shard_loader(src, rank=1, world=2)]
        [[1, 3]]
    """
    return DataLoader(
        Indexed(src.dataset, src.transform), batch_size=src.batch_size,
        sampler=ShardSampler(len(src.dataset), rank, world, start), num_workers=src.num_workers,
        collate_fn=Collate(src.collate), pin_memory=src.pin_memory,
    )


def first_readable(src: Source) -> Any:
    """The model input of the first item of ``src`` that can be read, as a batch of one (``None``: none can).

    Example:
        >>> import torch
        >>> first_readable(make_source(torch.ones(3, 2), None, 1, 0)).shape
        torch.Size([1, 2])
    """
    items = Indexed(src.dataset, src.transform)
    collate = Collate(src.collate)
    for i in range(len(items)):
        indices, batch, _ = collate([items[i]])
        if indices.numel():
            return first_item(batch)
    return None
