"""The result of a CAM call, :class:`CAMResult`, and its folder format ``featuremaps-cam/1``.

A saved folder holds (the ``featuremaps cam`` command writes the same):

* ``cams.safetensors``: per method ``M`` the heatmap ``M`` ``(N, *size)`` and
  each layer's raw map ``M/LAYER`` (float32); its metadata (all strings) are
  ``format`` (``"featuremaps-cam/1"``), ``model``, ``image``, ``target`` (the
  class index), ``class_name``, ``layers`` (JSON ``{method: [layer, ...]}``)
  and ``skipped`` (JSON list of methods that did not apply);
* ``cam_M.png`` (``+`` spelled ``p``): the first sample's map over the image
  the model sees, when that image is given;
* ``predictions.txt``: ``probability<TAB>index<TAB>name`` lines, when given;
* ``metrics.json``: ``{"target", "class_name", "scores": {method: {metric: value}}}``,
  when given.

:func:`save_cams` writes it (every file atomically), :func:`load_cams` reads it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._atomic import atomic_path
from ..io import save_image
from ..render.overlay import overlay
from ._errors import AttributionError
from .targets import ClassTarget, Target

__all__ = ["CAMResult", "CAMFile", "save_cams", "load_cams", "CAM_FORMAT"]

CAM_FORMAT = "featuremaps-cam/1"
TENSORS = "cams.safetensors"


@dataclass
class CAMResult:
    """Everything one CAM call computed.

    Attributes:
        heatmap: the final map, ``(N, *size)`` (the input's spatial size).
        layer_maps: per layer, the method's map at feature resolution before
            ReLU and scaling (the raw, comparable values).
        layers: the names of the layers used (capture keys, e.g. ``"layer4"``).
        method: the registered method name.
        target: the resolved target.
        scores: the target score of each sample on the unperturbed input.
        output: the adapted model output (detached).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> res = GradCAM(net, layer="1").explain(torch.rand(2, 3, 8, 8), target=1)
        >>> res.heatmap.shape, res.layers, res.classes.tolist()
        (torch.Size([2, 8, 8]), ('1',), [1, 1])
    """

    heatmap: torch.Tensor
    layer_maps: dict[str, torch.Tensor]
    layers: tuple[str, ...]
    method: str
    target: Target
    scores: torch.Tensor
    output: Any = None

    @property
    def classes(self) -> torch.Tensor | None:
        """The explained class of each sample, when the target is a class (else ``None``)."""
        c = self.target.classes
        if c is None:
            return None
        return c.expand(self.heatmap.shape[0]) if c.ndim == 0 else c

    def save(self, folder: str | os.PathLike[str], **options: Any) -> list[Path]:
        """Write this result as a ``featuremaps-cam/1`` folder; see :func:`save_cams` for ``options``.

        Example:
            >>> import tempfile, torch
            >>> from torch import nn
            >>> from featuremaps.attribution import GradCAM, load_cams
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
            >>> res = GradCAM(net, layer="1").explain(torch.rand(1, 3, 8, 8), target=1)
            >>> folder = tempfile.mkdtemp()
            >>> [p.name for p in res.save(folder)]
            ['cams.safetensors']
            >>> torch.equal(load_cams(folder)["gradcam"].heatmap, res.heatmap)
            True
        """
        return save_cams(folder, {self.method: self}, **options)

    def __repr__(self) -> str:
        return (
            f"CAMResult({self.method}, heatmap={tuple(self.heatmap.shape)}, layers={list(self.layers)}, "
            f"target={self.target!r})"
        )


def _slug(name: str) -> str:
    return name.replace("+", "p")


def _default_target(results: Mapping[str, CAMResult]) -> int | None:
    """The one class every sample of every result explains, or ``None`` (mixed, or not a class)."""
    seen: set[int] = set()
    for r in results.values():
        classes = r.classes
        if classes is None:
            return None
        seen.update(int(c) for c in classes.reshape(-1).tolist())
    return seen.pop() if len(seen) == 1 else None


def save_cams(
    folder: str | os.PathLike[str],
    results: Mapping[str, CAMResult],
    *,
    model: str = "",
    image: str = "",
    target: int | None = None,
    class_name: str | None = None,
    skipped: Sequence[str] = (),
    view: Any = None,
    alpha: float = 0.5,
    predictions: Sequence[tuple[int, str, float]] | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write CAM results as a ``featuremaps-cam/1`` folder (see the module docstring).

    Args:
        folder: the output folder (created if missing; files in it with the
            same names are replaced, others are left alone).
        results: ``{method: result}``, in the order to write them.
        model: how the model was named (e.g. ``"resnet50"``), for the record.
        image: where the image came from, for the record.
        target: the explained class (default: the class every result explains
            for every sample; none is recorded when they differ).
        class_name: its name (default: ``"class <target>"``).
        skipped: methods that were asked for but did not apply.
        view: the image the model sees (PIL image or array): also write
            ``cam_<method>.png``, the first sample's map over it.
        alpha: the overlay's opacity.
        predictions: ``(index, name, probability)`` rows for ``predictions.txt``.
        metrics: ``{method: {metric: value}}`` for ``metrics.json`` (values
            rounded to 6 decimals).

    Returns:
        The written files: the overlays, ``cams.safetensors``, then
        ``predictions.txt`` and ``metrics.json`` when written.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM, EigenCAM, save_cams, load_cams
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> x = torch.rand(1, 3, 8, 8)
        >>> res = {m.name: m(net, layer="1").explain(x, target=0) for m in (GradCAM, EigenCAM)}
        >>> paths = save_cams(tempfile.mkdtemp(), res, model="tiny", predictions=[(0, "cat", 0.75)])
        >>> [p.name for p in paths]
        ['cams.safetensors', 'predictions.txt']
        >>> saved = load_cams(paths[0].parent)
        >>> saved.methods, saved.target, saved.predictions
        (['gradcam', 'eigencam'], 0, [(0, 'cat', 0.75)])
    """
    if not results:
        raise AttributionError("results is empty; pass {method: CAMResult}, e.g. {res.method: res}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cls = _default_target(results) if target is None else target
    if class_name is None:
        class_name = f"class {cls}" if cls is not None else ""
    written: list[Path] = []
    tensors: dict[str, torch.Tensor] = {}
    meta_layers: dict[str, list[str]] = {}
    for name, result in results.items():
        heat = result.heatmap
        meta_layers[name] = list(result.layers)
        tensors[name] = heat.detach().float().cpu().contiguous()
        for lname, lmap in result.layer_maps.items():
            tensors[f"{name}/{lname}"] = lmap.detach().float().cpu().contiguous()
        if view is not None:
            picture = overlay(view, heat[0].detach().float().cpu(), alpha=alpha)
            written.append(save_image(np.asarray(picture), out / f"cam_{_slug(name)}.png"))
    meta = {
        "format": CAM_FORMAT,
        "model": model,
        "image": image,
        "target": "" if cls is None else str(cls),
        "class_name": class_name,
        "layers": json.dumps(meta_layers),
        "skipped": json.dumps(list(skipped)),
    }
    path = out / TENSORS
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    written.append(path)
    if predictions:
        pred = out / "predictions.txt"
        with atomic_path(pred) as tmp:
            tmp.write_text("".join(f"{q:.4f}\t{i}\t{n}\n" for i, n, q in predictions), encoding="utf-8")
        written.append(pred)
    if metrics is not None:
        scores = {m: {k: round(float(v), 6) for k, v in s.items()} for m, s in metrics.items()}
        mpath = out / "metrics.json"
        with atomic_path(mpath) as tmp:
            tmp.write_text(json.dumps({"target": cls, "class_name": class_name, "scores": scores}, indent=2) + "\n",
                           encoding="utf-8")
        written.append(mpath)
    return written


@dataclass
class CAMFile:
    """A ``featuremaps-cam/1`` folder read back by :func:`load_cams`.

    The files keep no target scores or model outputs: the results' ``scores``
    are NaN and their ``output`` is ``None``.

    Attributes:
        folder: where it was read from.
        results: ``{method: CAMResult}`` in the saved order.
        model: the model's name as saved.
        image: the image's origin as saved.
        target: the explained class (``None`` if none was saved).
        class_name: its name.
        skipped: methods that did not apply.
        predictions: ``(index, name, probability)`` rows (empty without ``predictions.txt``).
        metrics: ``{method: {metric: value}}``, or ``None`` without ``metrics.json``.
    """

    folder: Path
    results: dict[str, CAMResult]
    model: str = ""
    image: str = ""
    target: int | None = None
    class_name: str = ""
    skipped: list[str] = field(default_factory=list)
    predictions: list[tuple[int, str, float]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] | None = None

    @property
    def methods(self) -> list[str]:
        """The saved methods, in order."""
        return list(self.results)

    def __getitem__(self, method: str) -> CAMResult:
        try:
            return self.results[method]
        except KeyError:
            raise KeyError(f"{method!r} is not in {self.folder} (it holds {', '.join(self.results)})") from None


def load_cams(folder: str | os.PathLike[str]) -> CAMFile:
    """Read a ``featuremaps-cam/1`` folder (written by :func:`save_cams` or ``featuremaps cam``).

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM, load_cams
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> folder = tempfile.mkdtemp()
        >>> _ = GradCAM(net, layer="1").explain(torch.rand(2, 3, 8, 8), target=1).save(folder)
        >>> res = load_cams(folder)["gradcam"]
        >>> res.heatmap.shape, res.layers, res.classes.tolist()
        (torch.Size([2, 8, 8]), ('1',), [1, 1])
    """
    root = Path(folder)
    path = root / TENSORS
    if not path.is_file():
        raise AttributionError(
            f"{root} holds no {TENSORS}; pass a folder written by `featuremaps cam` or CAMResult.save"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != CAM_FORMAT:
            raise AttributionError(
                f"{path} is not a {CAM_FORMAT} file (format={meta.get('format')!r}); "
                "pass a folder written by `featuremaps cam` or CAMResult.save"
            )
        layers: dict[str, list[str]] = json.loads(meta.get("layers", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    raw_target = meta.get("target", "")
    cls = int(raw_target) if raw_target.lstrip("-").isdigit() else None
    results: dict[str, CAMResult] = {}
    for method, names in layers.items():
        heat = tensors[method]
        n = int(heat.shape[0])
        tgt: Target = ClassTarget(cls) if cls is not None else _Unknown()
        results[method] = CAMResult(
            heat, {ln: tensors[f"{method}/{ln}"] for ln in names}, tuple(names), method, tgt,
            torch.full((n,), float("nan")),
        )
    return CAMFile(
        root, results, meta.get("model", ""), meta.get("image", ""), cls, meta.get("class_name", ""),
        list(json.loads(meta.get("skipped", "[]"))), _read_predictions(root / "predictions.txt"),
        _read_metrics(root / "metrics.json"),
    )


class _Unknown(Target):
    """The target of a saved result that recorded no class."""

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        raise AttributionError("a loaded CAM result keeps no target; pass target= explicitly")

    def __repr__(self) -> str:
        return "UnknownTarget()"


def _read_predictions(path: Path) -> list[tuple[int, str, float]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        q, i, n = line.split("\t", 2)
        rows.append((int(i), n, float(q)))
    return rows


def _read_metrics(path: Path) -> dict[str, dict[str, float]] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    scores = data.get("scores") if isinstance(data, dict) else None
    return scores if isinstance(scores, dict) else None
