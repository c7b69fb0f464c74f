"""The old home of the embedded EfficientNet-Lite0, now :mod:`featuremaps.models.efficientnet`.

Kept only so that models pickled before the move (``torch.save(model)``, which records
``featuremaps._efficientnet.EfficientNetLite``) still load with ``trust_pickle=True``.
"""

from __future__ import annotations

from .models.efficientnet import Conv2dSame, EfficientNetLite, MBConvBlock, efficientnet_lite0, same_padding

__all__ = ["Conv2dSame", "EfficientNetLite", "MBConvBlock", "efficientnet_lite0", "same_padding"]
