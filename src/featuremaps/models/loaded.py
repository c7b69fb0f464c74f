"""A model with what featuremaps knows about it, and the one place that knows it: :func:`resolve`.

What this module guarantees:

* Every entry point turns its ``model`` (and ``preprocess=``) into a
  :class:`LoadedModel` with :func:`resolve`: the preprocessing given, else
  the card :func:`load_model` made for that model, else the stated default
  (input channels read from the first layer, resize 256 and crop 224,
  ImageNet statistics for 3 channels), said once per model in one warning
  line when an image is preprocessed with it.
* The card of a model :func:`load_model` made is found again from the model
  alone (``model, pre = fm.load_model(...)``; ``fm.report(model, img)``):
  a weak map, written by :func:`load_model` and read only in this module.
* Inputs are taken as users hold them (:func:`as_batch`): a path, a PIL
  image, an HxWxC array, a CxHxW tensor or a list of them is preprocessed;
  an ``(N, C, H, W)`` tensor passes unchanged; anything else given to a
  picture model is a one-line error naming what was passed and what to pass.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ImageLoadError, ModelLoadError
from ..io import load_image
from ._common import _first_line, _guess_num_classes, _module_device, _resolve_device
from .card import ModelCard, imagenet_card
from .channels import GREY_MEAN, GREY_STD, fit_card, input_channels, takes_images
from .load import _SPEC_FORMS, DEFAULT_MODEL, load_spec
from .preprocess import Preprocess
from .weights import _check_weights_arg, _load_weights_file, _no_keyword_weights, _weights_kind
from .xrv import xrv_card

__all__ = ["LoadedModel", "as_batch", "as_inputs", "load_model", "preprocess_for", "resolve"]

#: A preprocessing: a :class:`Preprocess`, or any function ``image -> (N, C, H, W) tensor``.
PreprocessLike = Union[Preprocess, Callable[[Any], torch.Tensor]]
P = TypeVar("P", bound=Callable[[Any], torch.Tensor])

# The card of every model load_model made, so that a model unpacked from its preprocessing
# (``model, preprocess = fm.load_model()``) and passed on alone still gets its own
# normalization and class names, not a guess. Weak: a model forgotten is dropped here too.
# Written by load_model, read by resolve (and by load_model(model), as_batch); nowhere else.
_CARDS: weakref.WeakKeyDictionary[nn.Module, ModelCard] = weakref.WeakKeyDictionary()

# Models whose default preprocessing was already announced (one notice per model).
_NOTICED: weakref.WeakSet[nn.Module] = weakref.WeakSet()

_WHAT_TO_PASS = (
    "pass an image path, a PIL image, an HxWxC array, a CxHxW tensor, a list of those, "
    "or an (N, C, H, W) tensor already preprocessed"
)


@dataclass(frozen=True)
class LoadedModel(Generic[P]):
    """A model and what featuremaps knows about it; unpacks as ``model, preprocess = ...``.

    Attributes:
        model: the ``nn.Module``.
        preprocess: its preprocessing: a :class:`Preprocess`, or a function
            ``image -> (N, C, H, W) tensor``.
        card: the :class:`ModelCard` (``preprocess.card``), or None for a
            plain preprocessing function.
        name: the model's name as reports show it.
        channels: the input channels (the card's, else the first layer's; None when unknown).
        guessed: True when ``preprocess`` is the stated default, not the model's own.

    Example:
        >>> import featuremaps as fm
        >>> loaded = fm.load_model()
        >>> model, preprocess = loaded
        >>> loaded.card.input_size, loaded.card.class_name(281), loaded.name
        ((224, 224), 'tabby', 'efficientnet_lite0')
    """

    model: nn.Module
    preprocess: P
    card: ModelCard | None = None
    name: str = ""
    channels: int | None = None
    guessed: bool = False

    def __post_init__(self) -> None:
        card = self.card if self.card is not None else getattr(self.preprocess, "card", None)
        card = card if isinstance(card, ModelCard) else None
        object.__setattr__(self, "card", card)
        if not self.name:
            object.__setattr__(self, "name", card.name if card is not None else type(self.model).__name__)
        if self.channels is None:
            object.__setattr__(self, "channels", card.channels if card is not None else input_channels(self.model))

    def __iter__(self) -> Any:
        return iter((self.model, self.preprocess))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        return (self.model, self.preprocess)[index]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names in output order, or None when unknown."""
        return self.card.class_names if self.card is not None else None

    def known(self) -> tuple[nn.Module, P | None]:
        """``(model, preprocess)``, with None for a preprocessing that is only the stated default.

        Example:
            >>> from torch import nn
            >>> resolve(nn.Conv2d(3, 3, 1)).known()[1] is None
            True
        """
        return self.model, None if self.guessed else self.preprocess

    def prepare(self, image: Any) -> torch.Tensor:
        """``image`` as the model's input batch: preprocessed, or an ``(N, C, H, W)`` tensor as it is.

        Args:
            image: a path, a PIL image, an HxWxC (or HxW) array, a CxHxW (or
                HxW) tensor, a list of those, or an ``(N, C, H, W)`` tensor
                (returned unchanged).

        Raises:
            ImageLoadError: anything else, or an image that cannot be read.

        Example:
            >>> import numpy as np
            >>> from torch import nn
            >>> net = nn.Conv2d(1, 4, 3)
            >>> loaded = resolve(net, Preprocess(size=32, channels=1))
            >>> loaded.prepare(np.zeros((40, 50), np.uint8)).shape
            torch.Size([1, 1, 32, 32])
        """
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            return image
        if not (_is_image(image) or isinstance(image, torch.Tensor) and image.ndim in (2, 3)):
            raise ImageLoadError(f"cannot use {_describe(image)} as an input image; {_WHAT_TO_PASS}")
        self.notice()
        if isinstance(self.preprocess, Preprocess):
            return self.preprocess(image)
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        batches = [_batched(self.preprocess(load_image(item))) for item in images]
        return torch.cat(batches) if len(batches) > 1 else batches[0]

    def notice(self) -> None:
        """Say, once per model, that images get the stated default preprocessing (nothing when they do not)."""
        if not self.guessed or self.model in _NOTICED:
            return
        _NOTICED.add(self.model)
        card = self.card
        if card is None:
            return
        c = card.channels
        stats = "ImageNet mean and std" if c == 3 else f"mean {GREY_MEAN} and std {GREY_STD} (ImageNet's, over RGB)"
        warnings.warn(
            f"featuremaps: {self.name} has no model card (it was not made by fm.load_model), so images get the "
            f"default preprocessing: {c} input channel{'s' if c != 1 else ''} (read from its first layer), "
            f"resize {card.resize}, centre crop {card.input_size[0]}x{card.input_size[1]}, {stats}; "
            "pass preprocess= to choose another",
            UserWarning,
            stacklevel=2,
        )


def load_model(
    spec: str | os.PathLike[str] | nn.Module = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
) -> LoadedModel[Preprocess]:
    """Resolve a model spec into an eval-mode model and its preprocessing.

    Args:
        spec: ``"efficientnet_lite0"`` (default; aliases ``"default"``,
            ``"efficientnet-lite0"``), ``"torchvision:NAME"``, ``"timm:NAME"``,
            ``"package.module:factory"``, a path (``str`` or ``os.PathLike``)
            to a TorchScript or pickled model file, or an ``nn.Module``.
        weights: for architecture specs: a path to a state dict (loaded with
            ``weights_only=True``, strictly; a dict nested under ``"state_dict"``
            or ``"model"`` and a ``"module."`` prefix are accepted),
            ``"download"`` (the library's pretrained weights: the only option
            that may use the network) or ``"random"`` (a seeded initialization:
            the same weights on every call; the caller's random state is left
            as it was). Required except for the
            embedded default, whose weights ship with featuremaps, and for
            model files and modules, which already hold theirs (a path is then
            loaded on top).
        device: where to put the model; CPU by default (an ``nn.Module`` spec
            stays where it is unless a device is given).
        trust_pickle: allow unpickling files that hold Python objects (a
            ``torch.save(model)`` file, or a checkpoint with extra objects).
            This can run arbitrary code: only for files you trust.

    Returns:
        A :class:`LoadedModel`: unpacks as ``model, preprocess``; ``.card`` has the :class:`ModelCard`.

    Raises:
        ModelLoadError: the spec is unknown, a file is missing or corrupt, the
            weights do not fit the architecture, or an optional library is
            missing.
        UnsafeModelError: the file needs unpickling and ``trust_pickle`` is False.

    Example:
        >>> import featuremaps as fm
        >>> model, preprocess = fm.load_model()
        >>> x = preprocess(fm.sample_image("cat"))
        >>> preprocess.card.class_name(int(model(x).argmax()))  # doctest: +SKIP
        'tiger cat'
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    label = type(spec).__name__ if isinstance(spec, nn.Module) else spec
    _check_weights_arg(weights, label)
    if isinstance(spec, nn.Module):
        model, card = _from_module(spec, weights, trust_pickle)
        if device is None:
            device = _module_device(model)
    elif not isinstance(spec, str):
        raise ModelLoadError(
            f"model spec must be a string or an nn.Module, got {type(spec).__name__}; "
            f"use {_SPEC_FORMS}"
        )
    else:
        model, card = load_spec(spec.strip(), weights, trust_pickle)
    target = _resolve_device(device, label)
    try:
        model = model.to(target)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(
            f"cannot move model {card.source!r} to device {str(target)!r}: {_first_line(exc)}; "
            "pick an available device, e.g. device='cpu'"
        ) from exc
    model.eval()
    card = fit_card(card, model)  # a 1-channel (or N-channel) model gets matching preprocessing
    _CARDS[model] = card
    return LoadedModel(model, Preprocess(card, device=target), name=card.name)


def resolve(model: Any, preprocess: PreprocessLike | None = None, *, notice: bool = False) -> LoadedModel[Any]:
    """The model and its preprocessing, the one way every entry point finds them.

    Args:
        model: an ``nn.Module``, a :class:`LoadedModel`, or a model spec
            string (loaded with :func:`load_model`).
        preprocess: overrides the model's own preprocessing.
        notice: say now (once per model) when the preprocessing is the
            stated default; otherwise it is said when an image is prepared.

    Returns:
        A :class:`LoadedModel`: ``preprocess`` if given, else the card
        :func:`load_model` made for this model (or a torchxrayvision
        model's own card), else the stated default, ``guessed=True``: input
        channels read from the first layer; resize 256 and crop 224; ImageNet
        mean and std for 3 channels, a grey picture with ImageNet's statistics
        averaged over RGB otherwise. The model is not changed.

    Example:
        >>> import featuremaps as fm
        >>> from torch import nn
        >>> model, preprocess = fm.load_model()
        >>> resolve(model).card.name, resolve(model).guessed
        ('efficientnet_lite0', False)
        >>> guess = resolve(nn.Conv2d(1, 4, 3))
        >>> guess.guessed, guess.channels, guess.card.input_size
        (True, 1, (224, 224))
    """
    if isinstance(model, LoadedModel):
        return model if preprocess is None else LoadedModel(model.model, preprocess, name=model.name)
    if isinstance(model, (str, os.PathLike)):
        loaded = load_model(model)
        return LoadedModel(loaded.model, loaded.preprocess if preprocess is None else preprocess, name=str(model))
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model must be an nn.Module, a LoadedModel or a model spec string, got {type(model).__name__}; "
            f"use {_SPEC_FORMS}"
        )
    if preprocess is not None:
        return LoadedModel(model, preprocess, card=getattr(preprocess, "card", None) or _CARDS.get(model))
    card = _CARDS.get(model) or xrv_card(model, type(model).__name__, type(model).__name__)
    if card is not None:  # made by load_model, or a torchxrayvision model: its own range, size and pathologies
        return LoadedModel(model, Preprocess(card, device=_module_device(model)))
    loaded = LoadedModel(model, Preprocess(_guessed_card(model), device=_module_device(model)), guessed=True)
    if notice:
        loaded.notice()
    return loaded


def preprocess_for(model: nn.Module, *, guess: bool = False) -> Preprocess | None:
    """The preprocessing :func:`load_model` returned with ``model``; for any other model None, or a guess.

    Args:
        model: the model; nothing in it is changed (unlike ``load_model(model)``,
            which puts it in eval mode).
        guess: for a model load_model did not make, the stated default of
            :func:`resolve` instead of None.

    Example:
        >>> import featuremaps as fm
        >>> from torch import nn
        >>> model, preprocess = fm.load_model()
        >>> preprocess_for(model).card.name, preprocess_for(nn.Conv2d(3, 3, 1))
        ('efficientnet_lite0', None)
        >>> preprocess_for(nn.Conv2d(3, 3, 1), guess=True).card.input_size
        (224, 224)
    """
    loaded = resolve(model)
    if loaded.guessed and not guess:
        return None
    return loaded.preprocess if isinstance(loaded.preprocess, Preprocess) else None


def as_batch(model: Any, x: Any, preprocess: PreprocessLike | None = None) -> Any:
    """``x`` as the input batch of ``model``: an image as users hold it is preprocessed; the rest is left.

    Rules, in order:

    * a tensor that is not 2-D or 3-D (an ``(N, C, H, W)`` batch, a volume,
      a vector) is returned unchanged, and so is a list of tensors (e.g. a
      detection model's input);
    * for a picture model (a card, ``preprocess`` given, or a first
      convolution that is 2-D) anything else is an image, preprocessed as
      :func:`resolve` says (``preprocess`` overrides): a path, a PIL image,
      an array, a 2-D or 3-D tensor, or a list of them; what is none of these
      is a one-line :class:`~featuremaps.errors.ImageLoadError` naming what
      was passed and what to pass;
    * for any other model only a PIL image, an array, an ``os.PathLike`` or
      an existing file's path is an image; the rest (text, token ids...) is
      the model's own input, returned unchanged.

    Example:
        >>> import numpy as np, torch
        >>> from torch import nn
        >>> net = nn.Conv2d(3, 4, 3)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> as_batch(net, x) is x
        True
        >>> as_batch(net, np.zeros((40, 60, 3), np.uint8), Preprocess(size=32)).shape
        torch.Size([1, 3, 32, 32])
    """
    if isinstance(x, torch.Tensor) and x.ndim not in (2, 3):
        return x
    if isinstance(x, (list, tuple)) and any(isinstance(item, torch.Tensor) for item in x):
        return x
    if _is_picture_model(model, preprocess) or _is_image(x, text=False):
        return resolve(model, preprocess).prepare(x)
    return x


def as_inputs(model: Any, args: tuple[Any, ...], preprocess: PreprocessLike | None = None) -> tuple[Any, ...]:
    """A forward's positional inputs with the first one read by :func:`as_batch` (the others as they are).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> x = torch.rand(1, 3, 8, 8)
        >>> as_inputs(nn.Conv2d(3, 4, 3), (x,))[0] is x
        True
    """
    if not args:
        return args
    return (as_batch(model, args[0], preprocess), *args[1:])


def _from_module(model: nn.Module, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    name = type(model).__name__
    _no_keyword_weights(weights, name, "an nn.Module already holds its weights")
    if _weights_kind(weights) == "path":
        _load_weights_file(model, weights, name, trust_pickle)
    return model, _CARDS.get(model) or _guessed_card(model)  # a model load_model made: its own card


def _guessed_card(model: nn.Module) -> ModelCard:
    name = type(model).__name__
    known = xrv_card(model, name, name)  # a torchxrayvision model: its own range, size and pathologies
    if known is not None:
        return known
    return fit_card(imagenet_card(name, name, _guess_num_classes(model)), model)


_IMAGE_TYPES = (str, os.PathLike, bytes, Image.Image, np.ndarray)


def _is_image(x: Any, *, text: bool = True) -> bool:
    """A path, encoded bytes, a PIL image or an array, or a non-empty list of them.

    With ``text=False`` a ``str`` counts only when it names an existing file (for models that take text).
    """
    if isinstance(x, (list, tuple)):
        return bool(x) and all(not isinstance(item, (list, tuple)) and _is_image(item, text=text) for item in x)
    if isinstance(x, str) and not text:
        return os.path.isfile(x)
    return isinstance(x, _IMAGE_TYPES)


def _is_picture_model(model: Any, preprocess: Any) -> bool:
    """Whether ``model`` takes pictures: a preprocessing is given or known, or its first convolution is 2-D."""
    if preprocess is not None or isinstance(model, LoadedModel):
        return True
    return isinstance(model, nn.Module) and (model in _CARDS or takes_images(model))


def _describe(x: Any) -> str:
    """What was passed, in a few words: ``a dict``, ``a list of 3 int``, ``a 1-D tensor``."""
    kind = type(x).__name__
    if isinstance(x, (list, tuple)):
        items = sorted({type(item).__name__ for item in x})
        return f"an empty {kind}" if not x else f"a {kind} of {len(x)} {'/'.join(items)}"
    if isinstance(x, torch.Tensor):
        return f"a {x.ndim}-D tensor of shape {tuple(x.shape)}"
    return "None" if x is None else f"a {kind}"


def _batched(x: Any) -> torch.Tensor:
    """A preprocessing function's result as an ``(N, C, H, W)`` batch (a ``(C, H, W)`` one gets N = 1)."""
    if not isinstance(x, torch.Tensor):
        raise ImageLoadError(
            f"the preprocess function returned a {type(x).__name__}, not a tensor; it must return a "
            "(1, C, H, W) tensor"
        )
    return x.unsqueeze(0) if x.ndim == 3 else x
