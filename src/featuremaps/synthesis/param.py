"""Image parameterizations: how the optimized numbers become an image.

The optimizer never changes pixels directly. It changes free tensors, and a
parameterization turns them into RGB images in ``[0, 1]``:

``free tensors -> (pixel | Fourier) latent image -> colour transform -> sigmoid -> pixels``

and :meth:`ImageParam.normalize` then applies the model's own normalization
(``(pixels - mean) / std`` from its :class:`~featuremaps.models.ModelCard`)
just before the forward, after the robustness transforms.

* **Pixel**: one free value per pixel and latent colour. Simple, but
  gradient ascent on pixels is dominated by high frequencies and ends in
  noise-like images.
* **Fourier** (default): the free values are the coefficients of the
  image's 2-D real FFT, each scaled by ``1 / max(k, 1) ** decay`` where
  ``k`` is its frequency in cycles per image. Natural images have roughly
  this 1/f amplitude spectrum, so equal steps on the coefficients give an
  image update with a natural-image spectrum: the optimization is
  preconditioned towards low frequencies and converges to structured
  images (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill
  2017, section "Preconditioning and Parameterization").
* **Decorrelated colour** (default on): the three latent channels are
  mapped to RGB with the square root of the ImageNet colour covariance
  (:func:`imagenet_color_matrix`), so that independent latent noise has the
  colour statistics of natural photos instead of saturated primaries.
* **Sigmoid bound**: ``sigmoid`` keeps every pixel in ``(0, 1)`` without
  clipping, so gradients never vanish at the bounds.

Random initial values come from per-image ``torch.Generator`` objects, so
that an image's start does not depend on which other images share its batch.

Example:
    >>> import torch
    >>> from featuremaps.synthesis.param import make_param
    >>> gens = [torch.Generator().manual_seed(i) for i in range(2)]
    >>> p = make_param("fft", 2, (32, 48), generators=gens)
    >>> p().shape, bool(((p() > 0) & (p() < 1)).all())
    (torch.Size([2, 3, 32, 48]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..models import IMAGENET_MEAN, IMAGENET_STD
from .objectives import SynthesisError

__all__ = [
    "PARAMS",
    "IMAGENET_EIGENVALUES",
    "IMAGENET_EIGENVECTORS",
    "imagenet_color_matrix",
    "ImageParam",
    "PixelParam",
    "FourierParam",
    "make_param",
    "spectrum_scale",
]

#: Names accepted by ``param=``.
PARAMS: tuple[str, ...] = ("fft", "pixel")

# The eigen-decomposition of the 3x3 covariance of RGB pixel values (scaled to
# [0, 1]) over the ImageNet training set. These are the values computed for the
# colour ("lighting") augmentation of Krizhevsky, Sutskever & Hinton, "ImageNet
# Classification with Deep Convolutional Neural Networks" (NIPS 2012, section
# 4.1: "PCA on the set of RGB pixel values throughout the ImageNet training
# set"), as published in the data loader of Facebook's ResNet training code
# (fb.resnet.torch, datasets/imagenet.lua). Columns of the vector matrix are
# the eigenvectors, in the order of the eigenvalues.
#: Eigenvalues of the ImageNet RGB covariance (pixels in [0, 1]), largest first.
IMAGENET_EIGENVALUES: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)
#: Eigenvectors (as columns; rows are R, G, B) of the ImageNet RGB covariance.
IMAGENET_EIGENVECTORS: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def imagenet_color_matrix() -> torch.Tensor:
    """The colour transform of decorrelated images: latent -> RGB, a 3x3 matrix.

    It is the symmetric square root of the ImageNet RGB covariance
    ``C = V diag(l) V^T`` (constants :data:`IMAGENET_EIGENVALUES` and
    :data:`IMAGENET_EIGENVECTORS`), ``M = V diag(sqrt(l)) V^T``, divided by
    ``sqrt(max(l))`` so the luminance axis has gain 1. White latent noise
    ``z`` becomes ``M z``, whose covariance ``M M^T`` is proportional to
    ``C``: mostly brightness variation with weaker colour contrast, as in
    photos.

    Returns:
        A float32 ``(3, 3)`` tensor; ``rgb = M @ latent`` at every pixel.

    Example:
        >>> import torch
        >>> m = imagenet_color_matrix()
        >>> cov = torch.tensor(IMAGENET_EIGENVECTORS) @ torch.diag(torch.tensor(IMAGENET_EIGENVALUES)) \\
        ...     @ torch.tensor(IMAGENET_EIGENVECTORS).T
        >>> bool(torch.allclose(m @ m.T, cov / max(IMAGENET_EIGENVALUES), atol=1e-3))
        True
    """
    v = torch.tensor(IMAGENET_EIGENVECTORS, dtype=torch.float64)
    lam = torch.tensor(IMAGENET_EIGENVALUES, dtype=torch.float64)
    m = v @ torch.diag(lam.sqrt()) @ v.T
    return (m / lam.max().sqrt()).to(torch.float32)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, Sequence) and len(size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in size
    ):
        h, w = int(size[0]), int(size[1])
    else:
        raise SynthesisError(f"size must be an int or (height, width), got {size!r}")
    if min(h, w) < 8:
        raise SynthesisError(f"size {size!r} is too small; use at least 8 pixels per side")
    return h, w


class ImageParam:
    """Base class: ``n`` RGB images in ``[0, 1]`` computed from free tensors.

    Subclasses create their free tensors in ``__init__`` and override
    :meth:`latent`, which returns the unbounded latent image
    ``(n, 3, h, w)``; this class adds the colour transform, the sigmoid and
    the model's normalization.

    Args:
        n: number of images.
        size: ``(height, width)`` or one int for square images.
        decorrelate: map latent colours to RGB with
            :func:`imagenet_color_matrix` (otherwise latent = RGB).
        mean, std: the model's normalization of ``[0, 1]`` pixels (RGB).
        device: where the tensors live (the model's device).

    Example:
        >>> import torch
        >>> p = PixelParam(1, 16, generators=[torch.Generator().manual_seed(0)])
        >>> x = p.normalize(p())
        >>> tuple(x.shape), [tuple(t.shape) for t in p.parameters()]
        ((1, 3, 16, 16), [(1, 3, 16, 16)])
    """

    def __init__(
        self,
        n: int,
        size: int | Sequence[int],
        *,
        decorrelate: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SynthesisError(f"the number of images must be a positive int, got {n!r}")
        self.n = n
        self.size = _size2(size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.decorrelate = bool(decorrelate)
        self.color = imagenet_color_matrix().to(self.device) if self.decorrelate else None
        mean_t = torch.as_tensor(tuple(float(v) for v in mean), dtype=torch.float32)
        std_t = torch.as_tensor(tuple(float(v) for v in std), dtype=torch.float32)
        if mean_t.numel() != 3 or std_t.numel() != 3 or bool((std_t <= 0).any()):
            raise SynthesisError(
                f"mean and std need 3 values (RGB) and std must be positive, got mean={tuple(mean)} std={tuple(std)}"
            )
        self.mean = mean_t.reshape(1, 3, 1, 1).to(self.device)
        self.std = std_t.reshape(1, 3, 1, 1).to(self.device)

    def parameters(self) -> list[torch.Tensor]:
        """The free tensors the optimizer changes."""
        raise NotImplementedError

    def latent(self) -> torch.Tensor:
        """The unbounded latent image ``(n, 3, h, w)`` (before colour transform and sigmoid)."""
        raise NotImplementedError

    def __call__(self) -> torch.Tensor:
        """The images ``(n, 3, h, w)`` with values in ``(0, 1)``."""
        z = self.latent()
        if self.color is not None:
            z = torch.einsum("ck,nkhw->nchw", self.color, z)
        return torch.sigmoid(z)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Apply the model's normalization: ``(pixels - mean) / std``."""
        return (pixels - self.mean) / self.std

    def _draw(self, generators: Sequence[torch.Generator], shape: tuple[int, ...], std: float) -> torch.Tensor:
        if len(generators) != self.n:
            raise SynthesisError(f"need one generator per image: got {len(generators)} for {self.n} images")
        draws = [torch.randn(shape, generator=g, dtype=torch.float32) * std for g in generators]
        return torch.stack(draws).to(self.device).requires_grad_(True)


class PixelParam(ImageParam):
    """One free value per pixel and latent colour channel.

    Args:
        n, size, decorrelate, mean, std, device: see :class:`ImageParam`.
        generators: one ``torch.Generator`` (CPU) per image for the initial values.
        init_std: standard deviation of the initial values (small: a grey start).

    Example:
        >>> import torch
        >>> p = PixelParam(2, (8, 12), generators=[torch.Generator().manual_seed(i) for i in range(2)])
        >>> p().shape
        torch.Size([2, 3, 8, 12])
    """

    def __init__(
        self,
        n: int,
        size: int | Sequence[int],
        *,
        generators: Sequence[torch.Generator],
        decorrelate: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device | None = None,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(n, size, decorrelate=decorrelate, mean=mean, std=std, device=device)
        h, w = self.size
        self.values = self._draw(generators, (3, h, w), init_std)

    def parameters(self) -> list[torch.Tensor]:
        return [self.values]

    def latent(self) -> torch.Tensor:
        return self.values


def spectrum_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """The per-coefficient scale of the Fourier parameterization, ``(h, w // 2 + 1)``.

    A coefficient at ``k`` cycles per image (``k = f * max(h, w)`` with ``f``
    in cycles per pixel) is scaled by ``1 / max(k, 1) ** decay``, times
    ``sqrt(h * w) / 4`` to undo the orthonormal inverse FFT's ``1 / sqrt(h w)``
    and give unit-size coefficient steps a moderate effect on the pixels,
    whatever the image size.

    Example:
        >>> s = spectrum_scale(8, 8)
        >>> tuple(s.shape), float(s[0, 0]), float(s[0, 4])   # DC and 4 cycles per image
        ((8, 5), 2.0, 0.5)
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    cycles = (fy.square() + fx.square()).sqrt() * max(height, width)
    scale = cycles.clamp(min=1.0).pow(-float(decay)) * (math.sqrt(height * width) / 4.0)
    return scale.to(torch.float32)


class FourierParam(ImageParam):
    """Free values are the image's 2-D FFT coefficients, scaled by a 1/f spectrum.

    ``latent = irfft2(c * spectrum_scale(h, w, decay), norm="ortho")`` with
    ``c`` complex coefficients (stored as real and imaginary parts).

    Args:
        n, size, decorrelate, mean, std, device: see :class:`ImageParam`.
        generators: one ``torch.Generator`` (CPU) per image for the initial values.
        init_std: standard deviation of the initial coefficients.
        decay: exponent of the ``1 / f`` scaling (1 = natural images' spectrum).

    Example:
        >>> import torch
        >>> p = FourierParam(1, (16, 24), generators=[torch.Generator().manual_seed(0)])
        >>> p().shape, tuple(p.parameters()[0].shape)
        (torch.Size([1, 3, 16, 24]), (1, 3, 16, 13, 2))
    """

    def __init__(
        self,
        n: int,
        size: int | Sequence[int],
        *,
        generators: Sequence[torch.Generator],
        decorrelate: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device | None = None,
        init_std: float = 0.01,
        decay: float = 1.0,
    ) -> None:
        super().__init__(n, size, decorrelate=decorrelate, mean=mean, std=std, device=device)
        h, w = self.size
        self.scale = spectrum_scale(h, w, decay).to(self.device)
        self.coefficients = self._draw(generators, (3, h, w // 2 + 1, 2), init_std)

    def parameters(self) -> list[torch.Tensor]:
        return [self.coefficients]

    def latent(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.coefficients) * self.scale
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho")


def make_param(
    kind: str,
    n: int,
    size: int | Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    decorrelate: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device | None = None,
) -> ImageParam:
    """Build the parameterization named ``kind`` (``"fft"`` or ``"pixel"``).

    Example:
        >>> import torch
        >>> type(make_param("pixel", 1, 8, generators=[torch.Generator()])).__name__
        'PixelParam'
    """
    key = str(kind).lower()
    if key in ("fft", "fourier"):
        return FourierParam(n, size, generators=generators, decorrelate=decorrelate, mean=mean, std=std, device=device)
    if key == "pixel":
        return PixelParam(n, size, generators=generators, decorrelate=decorrelate, mean=mean, std=std, device=device)
    raise SynthesisError(f"param={kind!r} is not a parameterization; use one of {', '.join(PARAMS)}")
