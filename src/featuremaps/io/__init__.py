"""Images in and out: ``load_image``, the shipped sample photos, ``save_image``.

The package's parts: :mod:`.decode` (files, bytes, streams and PIL images to upright 8-bit pictures),
:mod:`.arrays` (NumPy arrays and tensors), :mod:`.load` (:func:`load_image`, :func:`image_to_array`),
:mod:`.save` (:func:`save_image`), :mod:`.encode` (PNG / SVG / PDF bytes) and :mod:`.samples` (the sample
photos).

Every image that enters featuremaps goes through :func:`load_image`, which
returns a fully decoded 8-bit RGB :class:`PIL.Image.Image` and refuses, with
one clear :class:`~featuremaps.errors.ImageLoadError`, anything it cannot
convert faithfully. The conversion rules are:

* EXIF orientation is applied (the picture comes back upright).
* Grayscale (``1``, ``L``), palette (``P``, ``PA``), ``CMYK``, ``YCbCr``,
  ``HSV`` and ``LAB`` images are converted to RGB by Pillow.
* Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``,
  palette or ``tRNS`` transparency) is composited over a **white** background:
  ``out = round((c * a + 255 * (255 - a)) / 255)`` per channel, with ``c``
  the unpremultiplied colour and ``a`` the alpha, both 0..255.
* 16-bit images (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I`` whose
  values lie in 0..65535) are scaled by their full range:
  ``out = round(v * 255 / 65535)``, so 65535 -> 255, 32768 -> 128, 0 -> 0.
  16-bit RGB(A) PNG and TIFF files are reduced to 8 bits by Pillow itself
  (it keeps the high byte, which differs from rounding by at most 1).
  An ``I`` image with values outside 0..65535 is refused: it has no known
  range.
* Float ``F`` images from files or PIL: values in [0, 1] map to 0..255;
  any other finite range is stretched min -> 0, max -> 255 (a float file has
  no conventional range, e.g. a depth map); NaN or infinity is refused.
* NumPy arrays and torch tensors are stricter, because a wrong range there
  is usually a bug upstream (a normalised tensor, a 0-255 float): floats must
  lie in [0, 1] (up to half an 8-bit step, which rounds away) and be finite.
  ``uint8`` is used as is and ``bool`` maps to 0 / 255. Other integers
  (``uint16``, ``int16``, ...) are never wrapped: values in 0..65535 are
  scaled by their bit depth, the smallest of 8, 10, 12, 14 or 16 bits that
  holds the largest value (``round(v * 255 / (2**bits - 1))``: a 12-bit
  X-ray, largest value 4095, fills the whole grey range); negative values
  (CT in Hounsfield units) are stretched minimum -> 0, maximum -> 255.
* ``window=`` (any greyscale input) and DICOM files follow
  :mod:`featuremaps.medical`: ``(center, width)``, a preset such as
  ``"lung"`` or ``"bone"``, or ``"full"`` (minimum to maximum, any range,
  floats too).

Multi-frame files (GIF, APNG, TIFF) give their first frame. Unreadable EXIF
data is ignored: the pixels are kept as stored. Pillow warnings raised while
reading are not passed on; every real problem is an ``ImageLoadError``.
"""

from __future__ import annotations

from .load import DEFAULT_MAX_PIXELS, ImageSource, image_to_array, load_image
from .samples import sample_image, sample_images
from .save import IMAGE_FORMATS, save_image

__all__ = [
    "ImageSource",
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "image_to_array",
    "save_image",
    "IMAGE_FORMATS",
    "sample_image",
    "sample_images",
]
