"""Preprocessing: an image as users hold it -> the normalized batch a model expects, as its card says.

What this module guarantees:

* One set of steps for every image: load (any form :func:`featuremaps.io.load_image`
  takes), resize the short side, centre crop, scale to [0, 1], normalize per
  channel; :meth:`Preprocess.view` is the same picture before normalizing.
* Channels follow the card: RGB for 3, the grey level for 1, the grey level
  repeated for any other N.
* Memory is bounded: an image whose loaded or resized size is over
  ``max_pixels`` is refused before it is allocated.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ImageLoadError, ModelLoadError
from ..io import DEFAULT_MAX_PIXELS, load_image
from .card import _RESAMPLING, IMAGENET_MEAN, IMAGENET_STD, ModelCard, imagenet_card
from .classes import read_classes

__all__ = ["Preprocess", "resized_size"]


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
        img = load_image(image, max_pixels=self.max_pixels)
        if img.mode != "RGB":
            img = img.convert("RGB")
        width, height = img.size
        crop_h, crop_w = self.card.input_size
        new_w, new_h = resized_size(width, height, self.card.resize, crop_h, crop_w)
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


def resized_size(width: int, height: int, resize: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Size after resizing the short side to ``resize`` (torchvision's rounding).

    The long side is ``int(resize * long / short)``; if the result is smaller
    than the crop in either direction, the scale grows so the crop fits.

    Example:
        >>> resized_size(400, 300, 256, 224, 224)
        (341, 256)
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


_resized_size = resized_size  # the old private name
