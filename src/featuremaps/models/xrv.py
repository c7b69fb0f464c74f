"""torchxrayvision chest X-ray models: ``xrv:NAME`` specs and cards for XRV modules.

What this module guarantees:

* Nothing is downloaded: the architecture is built with ``weights=None`` and
  your weights file is loaded into it (``weights_only=True``; XRV's own
  downloaded DenseNet files are pickled models and need ``trust_pickle=True``).
* The card is XRV's preprocessing: one channel, the picture's 0-255 grey
  level mapped to [-1024, 1024] (``xrv.datasets.normalize(img, 255)``:
  mean 0.5 and std 0.5 / 1024 in the 0-1 scale), the short side resized to
  the model's resolution and the centre cropped square (XRayCenterCrop +
  XRayResizer), the model's pathologies as class names.
* Outputs are XRV's calibrated per-pathology scores (sigmoid, then
  ``op_norm`` with the published operating thresholds: 0.5 is the
  threshold), multi-label: shown as they are, not through a softmax.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ._common import _build, _suggest
from .card import ModelCard
from .weights import _load_state_dict, _torch_load, _unwrap_state_dict, _weights_kind

#: In the 0-1 pixel scale: (p - 0.5) / (0.5 / 1024) = (2 p - 1) * 1024, XRV's [-1024, 1024] range.
XRV_MEAN = 0.5
XRV_STD = 0.5 / 1024


def _xrv(spec: str) -> Any:
    try:
        return importlib.import_module("torchxrayvision")
    except ImportError:
        raise ModelLoadError(
            f"model spec {spec!r} needs torchxrayvision, which is not installed; pip install torchxrayvision"
        ) from None


def xrv_card(model: nn.Module, name: str, source: str) -> ModelCard | None:
    """The card of an XRV model (its pathologies, resolution and [-1024, 1024] range); None for others."""
    if not type(model).__module__.startswith("torchxrayvision"):
        return None
    return _card(model, name, source)


def _card(model: nn.Module, name: str, source: str) -> ModelCard:
    labels = getattr(model, "pathologies", None) or getattr(model, "targets", None)
    size = int(getattr(model, "input_resolution", 224) or 224)
    names = tuple(str(v) for v in labels) if labels else None
    return ModelCard(
        name=name, source=source, input_size=(size, size), resize=size, interpolation="bilinear",
        mean=(XRV_MEAN,), std=(XRV_STD,), class_names=names, num_classes=len(names) if names else None, channels=1,
        outputs="probabilities" if getattr(model, "op_threshs", None) is not None else "sigmoid",
    )


def load_xrv(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    """Build ``xrv:NAME`` (a DenseNet-121 weight name of torchxrayvision) and load the weights file into it."""
    name = spec.partition(":")[2]
    xrv = _xrv(spec)
    urls: dict[str, Any] = dict(xrv.models.model_urls)
    densenets = sorted(k for k in urls if k.startswith("densenet"))
    if name not in urls or not name.startswith("densenet"):
        hint = _suggest(name, densenets)
        raise ModelLoadError(
            f"unknown torchxrayvision DenseNet {name!r} in spec {spec!r}{hint}; use one of {', '.join(densenets)} "
            "(other XRV models: build them with torchxrayvision and pass the module)"
        )
    kind = _weights_kind(weights)
    if kind != "path":
        raise ModelLoadError(
            f"model spec {spec!r} needs weights=PATH: the weights file torchxrayvision downloaded for {name!r} "
            "(featuremaps never downloads; a pickled XRV file also needs trust_pickle=True)"
        )
    entry = urls[name]
    labels = list(entry["labels"])
    model: Any = _build(lambda: xrv.models.DenseNet(weights=None, num_classes=len(labels)), spec)
    path = Path(os.fspath(weights)).expanduser()  # type: ignore[arg-type]
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} for model {spec!r} not found; check the path")
    state = _unwrap_state_dict(_torch_load(path, trust_pickle, spec), str(path))
    state.pop("op_threshs", None)  # XRV sets the thresholds itself, below
    _load_state_dict(model, state, spec, str(path))
    model.pathologies = model.targets = labels
    if entry.get("op_threshs") is not None:
        model.op_threshs = torch.tensor(entry["op_threshs"])
    model.input_resolution = int(entry.get("input_resolution", 224))
    return model, _card(model, name, spec)
