"""EfficientNet-Lite0, the embedded default model.

A compact definition of the network described in "EfficientNet: Rethinking
Model Scaling for Convolutional Neural Networks" (Tan & Le, 2019) in its
"Lite" variant for mobile accelerators: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem and head that are not scaled. Module names
follow the layout of the shipped state dict (``_conv_stem``, ``_blocks.3.
_depthwise_conv``, ...) so the pretrained weights load with ``strict=True``.

Convolutions pad like TensorFlow's ``"SAME"`` mode: the output has
``ceil(size / stride)`` positions and the padding, computed from the input
size at every call, puts the odd pixel after the image (bottom/right).
Any input size therefore works and matches the original TensorFlow model.

Example:
    >>> import torch
    >>> from featuremaps.models.efficientnet import efficientnet_lite0
    >>> net = efficientnet_lite0().eval()
    >>> net(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "LITE0_STAGES",
    "Conv2dSame",
    "EfficientNetLite",
    "MBConvBlock",
    "efficientnet_lite0",
    "same_padding",
]

#: BatchNorm settings of the TensorFlow original (TF momentum 0.99 = PyTorch 0.01).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

#: Stages of EfficientNet-Lite0 (width and depth multipliers 1.0), one row per
#: stage: ``(expand_ratio, kernel_size, stride, out_channels, repeats)``. Only
#: the first block of a stage has the stride; the rest use stride 1.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Padding ``(before, after)`` of TensorFlow's ``"SAME"`` mode along one axis.

    The output has ``ceil(size / stride)`` positions; the total padding is
    ``max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)``,
    and when it is odd the extra pixel goes after the input.

    Example:
        >>> same_padding(224, 3, 2)
        (0, 1)
        >>> same_padding(7, 5, 1)
        (2, 2)
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A ``nn.Conv2d`` with TensorFlow ``"SAME"`` padding computed per input size.

    The ``padding`` argument is fixed to 0; the padding is applied in
    :meth:`forward` with :func:`same_padding`, so the layer works at any
    input size and is still an ``nn.Conv2d`` for ``isinstance`` checks.

    Example:
        >>> conv = Conv2dSame(3, 8, kernel_size=3, stride=2, bias=False)
        >>> conv(torch.zeros(1, 3, 15, 20)).shape
        torch.Size([1, 8, 8, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(
            int(x.shape[-2]), self.kernel_size[0], self.stride[0], self.dilation[0]
        )
        left, right = same_padding(
            int(x.shape[-1]), self.kernel_size[1], self.stride[1], self.dilation[1]
        )
        if top == bottom and left == right:  # symmetric (every stride-1 conv): the conv pads, no padded copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the "Lite" MBConv).

    ``1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 -> 1x1 project
    -> BN``, plus the input when the stride is 1 and the channel count is
    unchanged. With ``expand_ratio == 1`` the expansion is left out, so the
    block has no ``_expand_conv``, ``_bn0`` or ``_act0`` modules (the
    attributes are ``None``).

    Example:
        >>> block = MBConvBlock(16, 24, kernel_size=3, stride=2, expand_ratio=6)
        >>> block(torch.zeros(1, 16, 11, 11)).shape
        torch.Size([1, 24, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_residual = stride == 1 and in_channels == out_channels
        # None (not a module) when there is no expansion: TorchScript prunes the branch
        # and the block lists no such layers.
        self._expand_conv: Conv2dSame | None = None
        self._bn0: nn.BatchNorm2d | None = None
        self._act0: nn.ReLU6 | None = None
        if expand_ratio != 1:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._act1 = nn.ReLU6()
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self._expand_conv is not None and self._bn0 is not None and self._act0 is not None:
            y = self._act0(self._bn0(self._expand_conv(y)))
        y = self._act1(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.has_residual:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone and classifier built from a stage table.

    Args:
        stages: rows ``(expand_ratio, kernel_size, stride, out_channels,
            repeats)``; :data:`LITE0_STAGES` gives EfficientNet-Lite0.
        num_classes: size of the final linear layer ``_fc``.
        dropout: dropout probability before ``_fc`` (active in training only).
        stem_channels: output channels of ``_conv_stem``.
        head_channels: output channels of ``_conv_head``.

    Stochastic depth ("drop connect"), used when the original was trained, is
    not implemented: the model is meant for inference and inspection.

    Example:
        >>> net = EfficientNetLite(LITE0_STAGES, num_classes=10).eval()
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES,
        num_classes: int = 1000,
        dropout: float = 0.2,
        stem_channels: int = 32,
        head_channels: int = 1280,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self._conv_stem = Conv2dSame(3, stem_channels, 3, stride=2)
        self._bn0 = _bn(stem_channels)
        self._act_stem = nn.ReLU6()
        blocks: list[nn.Module] = []
        channels = stem_channels
        for expand_ratio, kernel_size, stride, out_channels, repeats in stages:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        channels,
                        out_channels,
                        kernel_size,
                        stride if i == 0 else 1,
                        expand_ratio,
                    )
                )
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(channels, head_channels, 1)
        self._bn1 = _bn(head_channels)
        self._act_head = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, ``(N, head_channels, ceil(H/32), ceil(W/32))``."""
        x = self._act_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act_head(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.forward_features(x)).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000, dropout: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0 with random initial weights (load a state dict to use it).

    Example:
        >>> net = efficientnet_lite0()
        >>> len(net._blocks), net._fc.weight.shape
        (16, torch.Size([1000, 1280]))
    """
    return EfficientNetLite(LITE0_STAGES, num_classes=num_classes, dropout=dropout)
