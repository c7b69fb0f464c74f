"""featuremaps: see what a PyTorch model sees.

Capture the feature maps of any layer of any model, visualize them, explain
predictions, and turn it all into a self-contained report.

Example:
    >>> import featuremaps as fm
    >>> model, preprocess = fm.load_model()                      # doctest: +SKIP
    >>> x = preprocess(fm.load_image(fm.sample_image("cat")))    # doctest: +SKIP
    >>> maps = fm.get_feature_maps(model, x, layers="*conv*")    # doctest: +SKIP
"""

from __future__ import annotations

from .atlas import Atlas, build_atlas, load_atlas
from .attribution import (
    CAM,
    AblationCAM,
    AttributionError,
    BaseCAM,
    CAMLayerError,
    CAMResult,
    ChannelRelevance,
    ClassTarget,
    DetectionTarget,
    EigenCAM,
    Faithfulness,
    GradCAM,
    GradCAMPlusPlus,
    GradientsDisabledError,
    HiResCAM,
    LayerCAM,
    ROADResult,
    SanityResult,
    ScoreCAM,
    SegmentationTarget,
    Target,
    TargetError,
    TopKTarget,
    XGradCAM,
    average_drop,
    average_increase,
    cam_methods,
    cams,
    channel_relevance,
    create_cam,
    deletion_auc,
    faithfulness,
    get_cam,
    insertion_auc,
    load_cams,
    pointing_game,
    register_cam,
    road,
    sanity_check,
    save_cams,
)
from .capture import FeatureExtractor, get_feature_maps, parse_bytes
from .concepts import ConceptExplanation, Concepts, discover_concepts, load_concepts
from .errors import (
    CaptureError,
    FeatureMapsError,
    ImageLoadError,
    LayerNotFoundError,
    LayoutError,
    MemoryBudgetError,
    ModelLoadError,
    RenderError,
    UnsafeModelError,
)
from .io import image_to_array, load_image, sample_image, sample_images, save_image
from .layers import resolve_layers
from .listing import list_layers
from .medical import WINDOW_PRESETS, ImageMeta, image_meta
from .volume import Volume, load_volume
from .layout import LayoutSpec, infer_layout, to_canonical, token_grid
from .models import LoadedModel, ModelCard, Preprocess, available_models, imagenet_classes, load_model
from .maps import FeatureMaps, LayerInfo, LayerMap, LayerStats, load_maps
from .reducers import Max, Mean, Pool
from .render import channel_grid
from .report import Report, render_report, report
from .synthesis import SynthesisError, SynthesisResult, synthesize
from .tensorboard import log_to_tensorboard
from .visualize import Visualization, overlay, plot_histograms, plot_stats, render_map, visualize

from ._version import __version__

__all__ = [
    "__version__",
    # capture
    "FeatureExtractor",
    "get_feature_maps",
    "parse_bytes",
    "list_layers",
    "resolve_layers",
    "FeatureMaps",
    "LayerMap",
    "LayerInfo",
    "LayerStats",
    "load_maps",
    "Mean",
    "Max",
    "Pool",
    "LayoutSpec",
    "infer_layout",
    "to_canonical",
    "token_grid",
    # rendering
    "visualize",
    "render_map",
    "Visualization",
    "channel_grid",
    "overlay",
    "plot_stats",
    "plot_histograms",
    "log_to_tensorboard",
    # attribution
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "EigenCAM",
    "AblationCAM",
    "CAM",
    "BaseCAM",
    "CAMResult",
    "cam_methods",
    "cams",
    "get_cam",
    "create_cam",
    "register_cam",
    "Target",
    "ClassTarget",
    "TopKTarget",
    "SegmentationTarget",
    "DetectionTarget",
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "average_increase",
    "road",
    "ROADResult",
    "pointing_game",
    "faithfulness",
    "Faithfulness",
    "save_cams",
    "load_cams",
    "sanity_check",
    "SanityResult",
    "channel_relevance",
    "ChannelRelevance",
    "AttributionError",
    "TargetError",
    "CAMLayerError",
    "GradientsDisabledError",
    # atlas
    "build_atlas",
    "load_atlas",
    "Atlas",
    # concepts discovered from data
    "discover_concepts",
    "load_concepts",
    "Concepts",
    "ConceptExplanation",
    # feature visualization by optimization
    "synthesize",
    "SynthesisResult",
    "SynthesisError",
    # report
    "report",
    "render_report",
    "Report",
    # models
    "load_model",
    "LoadedModel",
    "ModelCard",
    "Preprocess",
    "available_models",
    "imagenet_classes",
    # images
    "load_image",
    "image_to_array",
    "save_image",
    "sample_image",
    "sample_images",
    # medical images
    "image_meta",
    "ImageMeta",
    "WINDOW_PRESETS",
    "load_volume",
    "Volume",
    # errors
    "FeatureMapsError",
    "ImageLoadError",
    "ModelLoadError",
    "UnsafeModelError",
    "LayerNotFoundError",
    "CaptureError",
    "MemoryBudgetError",
    "LayoutError",
    "RenderError",
]
