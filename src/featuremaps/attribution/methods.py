"""The registered CAM methods, in the registry's order.

The methods live by kind: :mod:`.gradient` (Grad-CAM, Grad-CAM++,
XGrad-CAM, HiResCAM, LayerCAM), :mod:`.perturbation` (Score-CAM,
Ablation-CAM) and :mod:`.activation` (Eigen-CAM, CAM). This table registers
them; its order is :func:`~featuremaps.attribution.cam_methods`' order, the
one the ``featuremaps cam`` command and the report show.
"""

from __future__ import annotations

from .activation import CAM, EigenCAM
from .base import BaseCAM
from .gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .perturbation import AblationCAM, ScoreCAM
from .registry import register_cam

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "EigenCAM",
    "AblationCAM",
    "CAM",
]

#: (class, name, aliases...): the built-in methods, registered in this order
BUILTIN: tuple[tuple[type[BaseCAM], str, tuple[str, ...]], ...] = (
    (GradCAM, "gradcam", ("grad-cam",)),
    (GradCAMPlusPlus, "gradcam++", ("gradcampp", "gradcamplusplus", "grad-cam++")),
    (XGradCAM, "xgradcam", ("xgrad-cam",)),
    (HiResCAM, "hirescam", ("hires-cam",)),
    (LayerCAM, "layercam", ("layer-cam",)),
    (ScoreCAM, "scorecam", ("score-cam",)),
    (EigenCAM, "eigencam", ("eigen-cam",)),
    (AblationCAM, "ablationcam", ("ablation-cam",)),
    (CAM, "cam", ()),
)

for _cls, _name, _aliases in BUILTIN:
    register_cam(_name, *_aliases)(_cls)
