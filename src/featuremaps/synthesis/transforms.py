"""Transformation robustness: small random changes of the image at every step.

An image optimized to excite a channel through one fixed view of the model
tends to exploit that view: pixel-exact high-frequency patterns that fall
apart when the image moves by one pixel. Optimizing through random small
translations, scalings and rotations instead asks for images that excite
the channel *robustly*, which look far more like the things the channel
detects (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill
2017, section "Transformation robustness").

:class:`Transforms` pads the image with grey, then applies one random affine
map per image and step (scale, rotation and translation combined into a
single ``grid_sample`` on the model's device). The random parameters of all
steps are drawn at the start from each image's own ``torch.Generator``, so a
seed gives the same transforms whatever else shares the batch and the
global random state is never touched.

Example:
    >>> import torch
    >>> from featuremaps.synthesis.transforms import standard_transforms
    >>> t = standard_transforms(64)
    >>> params = t.draw(10, torch.Generator().manual_seed(0))        # 10 steps, one image
    >>> t(torch.rand(1, 3, 64, 64), params[:1]).shape                # step 0
    torch.Size([1, 3, 76, 76])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F

from .objectives import SynthesisError

__all__ = ["Transforms", "TransformsLike", "standard_transforms", "no_transforms", "get_transforms"]

#: What ``transforms=`` accepts: ``"standard"``, ``"none"``/``None``, a
#: :class:`Transforms`, or a callable ``images -> images`` applied as is
#: (deterministic, on the ``(n, 3, h, w)`` batch in ``[0, 1]``).
TransformsLike = Union[None, str, "Transforms", Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Transforms:
    """Grey padding, then a random affine map per image and step.

    Per image and step: a scale factor uniform in ``scale``, a rotation
    uniform in ``[-degrees, degrees]`` and a translation uniform in
    ``[-jitter, jitter]`` pixels along each axis, applied about the centre
    of the padded image with bilinear sampling.

    Attributes:
        pad: pixels of constant ``pad_value`` added on every side.
        jitter: largest translation in pixels.
        scale: ``(low, high)`` range of the zoom factor (> 1 enlarges).
        degrees: largest rotation in degrees.
        pad_value: the padding's grey level in ``[0, 1]`` pixel units.

    Example:
        >>> import torch
        >>> t = Transforms(pad=2)
        >>> t(torch.zeros(1, 3, 4, 4), t.draw(1, torch.Generator())[:1])[0, 0, 0, :3]
        tensor([0.5000, 0.5000, 0.5000])
    """

    pad: int = 0
    jitter: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    degrees: float = 0.0
    pad_value: float = 0.5

    def __post_init__(self) -> None:
        bad = None
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            bad = f"pad={self.pad!r} must be an int >= 0"
        elif not (math.isfinite(self.jitter) and self.jitter >= 0):
            bad = f"jitter={self.jitter!r} must be >= 0"
        elif len(self.scale) != 2 or not (0 < self.scale[0] <= self.scale[1] < math.inf):
            bad = f"scale={self.scale!r} must be (low, high) with 0 < low <= high"
        elif not (math.isfinite(self.degrees) and self.degrees >= 0):
            bad = f"degrees={self.degrees!r} must be >= 0"
        if bad:
            raise SynthesisError(f"Transforms: {bad}")

    @property
    def is_affine(self) -> bool:
        """Whether any random affine change is configured (else only padding)."""
        return self.jitter > 0 or self.degrees > 0 or self.scale != (1.0, 1.0)

    def draw(self, steps: int, generator: torch.Generator) -> torch.Tensor:
        """The random parameters of one image for ``steps`` steps: ``(steps, 4)``.

        Columns: zoom factor, rotation in radians, x and y translation in
        pixels. Drawn on the CPU from ``generator``.
        """
        u = torch.rand(steps, 4, generator=generator, dtype=torch.float64)
        lo, hi = self.scale
        zoom = lo + (hi - lo) * u[:, 0]
        angle = math.radians(self.degrees) * (2 * u[:, 1] - 1)
        shift = self.jitter * (2 * u[:, 2:] - 1)
        return torch.cat([zoom[:, None], angle[:, None], shift], dim=1).to(torch.float32)

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Transform ``images`` ``(n, 3, h, w)`` with one row of ``params`` ``(n, 4)`` per image."""
        x = images
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="constant", value=float(self.pad_value))
        if not self.is_affine:
            return x
        n, _, h, w = x.shape
        p = params.to(device=x.device, dtype=x.dtype)
        zoom, angle, tx, ty = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # Output pixel (normalized coords) -> input coords: D^-1 R D / zoom + t, D = diag(w/2, h/2)
        theta = torch.stack(
            [
                torch.stack([cos, -sin * (h / w), -2.0 * tx / w], dim=1),
                torch.stack([sin * (w / h), cos, -2.0 * ty / h], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def output_size(self, size: Sequence[int]) -> tuple[int, int]:
        """The size of the transformed images for inputs of ``size`` ``(h, w)``."""
        return int(size[0]) + 2 * self.pad, int(size[1]) + 2 * self.pad


def standard_transforms(size: int | Sequence[int]) -> Transforms:
    """The default robustness transforms for images of ``size``.

    Grey padding of about 1/10 of the image side, jitter of 1/16 of it,
    zoom in ``[0.9, 1.1]`` and rotation within 10 degrees (at 128 pixels:
    pad 12, jitter 8).

    Example:
        >>> standard_transforms(128)
        Transforms(pad=12, jitter=8.0, scale=(0.9, 1.1), degrees=10.0, pad_value=0.5)
    """
    side = int(size) if isinstance(size, int) else max(int(s) for s in size)
    return Transforms(
        pad=max(1, round(side * 12 / 128)), jitter=float(max(1, side // 16)), scale=(0.9, 1.1), degrees=10.0,
    )


def no_transforms() -> Transforms:
    """No padding, no random change: the image is used as it is.

    Example:
        >>> no_transforms().is_affine
        False
    """
    return Transforms()


def get_transforms(
    transforms: TransformsLike, size: int | Sequence[int]
) -> Transforms | Callable[[torch.Tensor], torch.Tensor]:
    """Resolve a ``transforms=`` argument for images of ``size``.

    Example:
        >>> get_transforms("none", 64) == no_transforms()
        True
    """
    if transforms is None:
        return no_transforms()
    if isinstance(transforms, str):
        key = transforms.lower()
        if key == "standard":
            return standard_transforms(size)
        if key == "none":
            return no_transforms()
        raise SynthesisError(
            f"transforms={transforms!r} is unknown; use 'standard', 'none', a Transforms(...) or a callable"
        )
    if isinstance(transforms, Transforms) or callable(transforms):
        return transforms
    raise SynthesisError(
        f"transforms= got {type(transforms).__name__}; use 'standard', 'none', a Transforms(...) or a callable"
    )
