"""Feature visualization by optimization: what image would make this channel fire?

Besides the dataset images that activate a channel most (the atlas), an
image *synthesized* to activate it: start from faint noise and follow the
gradient of the channel's activation with respect to the image, through a
natural-image parameterization and random transformations (Olah,
Mordvintsev & Schubert, "Feature Visualization", Distill 2017).

* :func:`synthesize` - the one entry point: targets in, PIL images out;
* :mod:`.objectives` - what to maximize (:class:`Channel`, :class:`Neuron`,
  :class:`LayerL2`, :class:`ClassLogit`, :class:`Direction`,
  :class:`Diversity`, and weighted sums of them);
* :mod:`.param` - pixel and Fourier parameterizations, decorrelated colour;
* :mod:`.transforms` - the robustness transforms (pad, jitter, scale, rotate).

Example:
    >>> import featuremaps as fm
    >>> from featuremaps.synthesis import synthesize, Channel, Diversity
    >>> model, preprocess = fm.load_model()
    >>> img = synthesize(model, "_blocks.5._project_conv:17", preprocess=preprocess)  # doctest: +SKIP
    >>> imgs = synthesize(model, Channel("_blocks.5._project_conv", 3)
    ...                   + 0.5 * Diversity("_blocks.5._project_conv"), samples=4,
    ...                   preprocess=preprocess)                                     # doctest: +SKIP
"""

from __future__ import annotations

from .objectives import (
    Activations,
    Channel,
    ClassLogit,
    Direction,
    Diversity,
    LayerL2,
    Neuron,
    Objective,
    Sum,
    SynthesisError,
)
from .optimize import synthesize
from .param import PARAMS, FourierParam, ImageParam, PixelParam, imagenet_color_matrix, make_param
from .result import SynthesisResult, tile_images
from .targets import TargetLike, parse_target
from .transforms import Transforms, standard_transforms

__all__ = [
    "synthesize",
    "SynthesisResult",
    "SynthesisError",
    "TargetLike",
    "parse_target",
    "tile_images",
    # objectives
    "Objective",
    "Activations",
    "Channel",
    "Neuron",
    "LayerL2",
    "ClassLogit",
    "Direction",
    "Diversity",
    "Sum",
    # parameterizations and transforms
    "PARAMS",
    "ImageParam",
    "PixelParam",
    "FourierParam",
    "make_param",
    "imagenet_color_matrix",
    "Transforms",
    "standard_transforms",
]
