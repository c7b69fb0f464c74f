"""The model card: what featuremaps knows about a model (input size, resizing, statistics, classes).

What this module guarantees:

* A :class:`ModelCard` is valid when it exists: sizes positive, one mean and
  std per input channel (a single value is repeated), a known resampling
  filter and output kind; anything else is a :class:`~featuremaps.errors.ModelLoadError`.
* :func:`imagenet_card` is the one standard card (resize 256, crop 224,
  ImageNet statistics) that loaders start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import ModelLoadError
from .classes import imagenet_classes

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelCard", "imagenet_card"]

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


