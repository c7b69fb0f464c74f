"""featuremaps: see what a PyTorch model sees.

Capture the feature maps of any layer of any model, visualize them, explain
predictions, and turn it all into a self-contained report.

The package imports lazily (PEP 562): ``import featuremaps`` loads nothing
heavy, and each public name imports its module (and PyTorch) the first time
it is used, so the command line answers ``--help`` without importing torch.
``_EXPORTS`` is the one table of which module defines which public name;
``from featuremaps import X``, ``featuremaps.X``, ``dir(featuremaps)`` and
static type checkers (through the ``TYPE_CHECKING`` imports, which the test
suite checks against the table) all see the same names.

Example:
    >>> import featuremaps as fm
    >>> model, preprocess = fm.load_model()                      # doctest: +SKIP
    >>> x = preprocess(fm.load_image(fm.sample_image("cat")))    # doctest: +SKIP
    >>> maps = fm.get_feature_maps(model, x, layers="*conv*")    # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
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

#: Which module defines each public name (the run-time twin of the imports above).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "atlas": (
        "Atlas", "build_atlas", "load_atlas",
    ),
    "attribution": (
        "CAM", "AblationCAM", "AttributionError", "BaseCAM", "CAMLayerError", "CAMResult",
        "ChannelRelevance", "ClassTarget", "DetectionTarget", "EigenCAM", "Faithfulness", "GradCAM", "GradCAMPlusPlus",
        "GradientsDisabledError", "HiResCAM", "LayerCAM", "ROADResult", "SanityResult", "ScoreCAM",
        "SegmentationTarget", "Target", "TargetError", "TopKTarget", "XGradCAM", "average_drop",
        "average_increase", "cam_methods", "channel_relevance", "create_cam", "deletion_auc",
        "faithfulness", "get_cam", "insertion_auc", "pointing_game", "register_cam", "road", "sanity_check",
        "cams", "load_cams", "save_cams",
    ),
    "capture": (
        "FeatureExtractor", "get_feature_maps", "parse_bytes",
    ),
    "concepts": (
        "ConceptExplanation", "Concepts", "discover_concepts", "load_concepts",
    ),
    "errors": (
        "CaptureError", "FeatureMapsError", "ImageLoadError", "LayerNotFoundError", "LayoutError",
        "MemoryBudgetError", "ModelLoadError", "RenderError", "UnsafeModelError",
    ),
    "io": (
        "image_to_array", "load_image", "sample_image", "sample_images", "save_image",
    ),
    "layers": (
        "resolve_layers",
    ),
    "listing": (
        "list_layers",
    ),
    "medical": (
        "WINDOW_PRESETS", "ImageMeta", "image_meta",
    ),
    "volume": (
        "Volume", "load_volume",
    ),
    "layout": (
        "LayoutSpec", "infer_layout", "to_canonical", "token_grid",
    ),
    "models": (
        "LoadedModel", "ModelCard", "Preprocess", "available_models", "imagenet_classes", "load_model",
    ),
    "maps": (
        "FeatureMaps", "LayerInfo", "LayerMap", "LayerStats", "load_maps",
    ),
    "reducers": (
        "Max", "Mean", "Pool",
    ),
    "render": (
        "channel_grid",
    ),
    "report": (
        "Report", "render_report", "report",
    ),
    "synthesis": (
        "SynthesisError", "SynthesisResult", "synthesize",
    ),
    "tensorboard": (
        "log_to_tensorboard",
    ),
    "visualize": (
        "Visualization", "overlay", "plot_histograms", "plot_stats", "render_map", "visualize",
    ),
}


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

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562), or a submodule (``featuremaps.models``)."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # next time a plain attribute
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but something it imports does not
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _SharedName:
    """A public function named like the submodule that defines it (``report``, ``visualize``).

    Importing a submodule binds it on its package (``featuremaps.report = <module>``), which
    would hide the function once anything imported ``featuremaps.report.build``; this data
    descriptor keeps ``featuremaps.report`` the function, as the eager package had it (a
    value other than the module, e.g. a test's stand-in, replaces it until deleted).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.slot = f"_replaced_{name}"

    def __get__(self, package: Any, owner: Any = None) -> Any:
        if package is None:
            return self
        if self.slot in vars(package):
            return vars(package)[self.slot]
        return getattr(importlib.import_module(f".{self.name}", __name__), self.name)

    def __set__(self, package: Any, value: Any) -> None:
        if not isinstance(value, types.ModuleType):  # the import system binding the submodule: ignored
            vars(package)[self.slot] = value

    def __delete__(self, package: Any) -> None:
        vars(package).pop(self.slot, None)


class _Package(types.ModuleType):
    """The package's module type: the names it shares with submodules stay the functions."""

    report = _SharedName("report")
    visualize = _SharedName("visualize")


sys.modules[__name__].__class__ = _Package
