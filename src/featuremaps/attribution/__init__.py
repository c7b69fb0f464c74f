"""Attribution: which parts of the input a prediction depends on.

CAM methods (one registry, one base class and its three kinds), targets,
faithfulness metrics and sanity checks, all batched torch ops on the model's
device.

Modules: :mod:`.base` (the base class), :mod:`.kinds` (gradient, activation,
perturbation), :mod:`.gradient`, :mod:`.activation`, :mod:`.perturbation`
(the methods), :mod:`.methods` (their registration), :mod:`.registry`,
:mod:`.runtime`, :mod:`.postprocess`, :mod:`.layerref`, :mod:`.result`
(results and the ``featuremaps-cam/1`` folder), :mod:`.outputs` and
:mod:`.targets`, :mod:`.evaluator` and :mod:`.metrics` (faithfulness),
:mod:`.imputation`, :mod:`.relevance`, :mod:`.sanity`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from featuremaps.attribution import GradCAM, cam_methods
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 5))
    >>> cam = GradCAM(net, layer="auto")
    >>> cam(torch.rand(2, 3, 32, 32), target=3).shape     # (N, H, W) in the input's size
    torch.Size([2, 32, 32])
    >>> cam_methods()
    ['gradcam', 'gradcam++', 'xgradcam', 'hirescam', 'layercam', 'scorecam', 'eigencam', 'ablationcam', 'cam']
"""

from __future__ import annotations

from ._errors import AttributionError, CAMLayerError, GradientsDisabledError, TargetError
from .base import BaseCAM
from .evaluator import Faithfulness
from .kinds import ActivationCAM, GradientCAM, PerturbationCAM
from .layerref import LayerContext
from .methods import CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from .metrics import (
    ROADResult,
    average_drop,
    average_increase,
    deletion_auc,
    faithfulness,
    insertion_auc,
    pointing_game,
    road,
)
from .postprocess import minmax_per_image, postprocess_cams, resize_maps
from .registry import cam_methods, create_cam, get_cam, register_cam, registered, unregister_cam
from .relevance import ChannelRelevance, channel_relevance
from .result import CAMFile, CAMResult, load_cams, save_cams
from .sanity import SanityResult, rank_correlation, sanity_check, ssim
from .shared import CAMResults, cams
from .targets import (
    CallableTarget,
    ClassTarget,
    DetectionTarget,
    PerSampleTarget,
    SegmentationTarget,
    Target,
    TopKTarget,
    adapt_output,
    resolve_target,
)

__all__ = [
    # methods
    "BaseCAM",
    "GradientCAM",
    "ActivationCAM",
    "PerturbationCAM",
    "CAMResult",
    "LayerContext",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "EigenCAM",
    "AblationCAM",
    "CAM",
    "cam_methods",
    "get_cam",
    "create_cam",
    "cams",
    "CAMResults",
    "register_cam",
    "unregister_cam",
    "registered",
    "postprocess_cams",
    "minmax_per_image",
    "resize_maps",
    # saved results (the featuremaps-cam/1 folder)
    "save_cams",
    "load_cams",
    "CAMFile",
    # targets
    "Target",
    "ClassTarget",
    "TopKTarget",
    "SegmentationTarget",
    "DetectionTarget",
    "CallableTarget",
    "PerSampleTarget",
    "adapt_output",
    "resolve_target",
    # metrics
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "average_increase",
    "road",
    "ROADResult",
    "pointing_game",
    "faithfulness",
    "Faithfulness",
    # which channels drove the decision
    "channel_relevance",
    "ChannelRelevance",
    # sanity checks
    "sanity_check",
    "SanityResult",
    "rank_correlation",
    "ssim",
    # errors
    "AttributionError",
    "TargetError",
    "CAMLayerError",
    "GradientsDisabledError",
]
