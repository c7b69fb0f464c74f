"""The report's concepts, in "What drove this prediction": how much each concept drove each class, and where it is.

When the report is given concepts (a folder written by
:func:`~featuremaps.discover_concepts` or ``featuremaps concepts``, or a
:class:`~featuremaps.concepts.Concepts`), :meth:`Concepts.explain` on the
photo gives, for every listed class, each concept's importance (gradient x
coefficient summed over the map) and, once for the photo, each concept's
coefficients at every position of its layer (the layer's activations
projected on the concepts, exactly as :meth:`Concepts.coefficients` does).
The section keeps, per concept, its heatmap (a small grayscale PNG, on one
scale for all concepts, which the page colours and lays over the photo), a
link to its page (its top dataset examples) and, when the folder has them,
its example patches.

:func:`load_report_concepts` checks the concepts up front (a folder that is
not a concepts folder, or concepts of a layer this model does not have, is a
one-line error) before the report does any work.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import FeatureMapsError
from .data import png_data_uri

if TYPE_CHECKING:
    from ..concepts import Concepts

__all__ = ["ReportConcepts", "load_report_concepts", "concept_section", "with_concept_layer", "MAX_SHEET_BYTES"]

MAX_SHEET_BYTES = 400_000
"""Example sheets larger than this are linked, not embedded in the page."""


@dataclass
class ReportConcepts:
    """Concepts checked against the report's model, with where their pages are.

    Attributes:
        concepts: the concepts.
        folder: the folder they were read from (``None``: given as an object).
        href: how the page links to that folder (``None``: no links).
    """

    concepts: Concepts
    folder: Path | None
    href: str | None

    @property
    def layer(self) -> str:
        """The concepts' layer."""
        return self.concepts.layer

    def page(self, k: int) -> str | None:
        """The link to concept ``k``'s page (its top dataset examples), or ``None``."""
        if self.href is None:
            return None
        base = self.href.rstrip("/")
        atlas = self.concepts.atlas
        if atlas is not None:
            return f"{base}/atlas/{atlas.channel_href('concepts', k)}"
        return f"{base}/index.html#k{k}"

    def sheet(self, k: int) -> str | None:
        """Concept ``k``'s example patches as a data URI, when the folder has them (and they are small)."""
        if self.folder is None:
            return None
        for ext, mime in (("png", "image/png"), ("jpg", "image/jpeg")):
            path = self.folder / "atlas" / "patches" / "000" / f"{k}.{ext}"
            if path.is_file() and path.stat().st_size <= MAX_SHEET_BYTES:
                return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        return None


def load_report_concepts(
    model: nn.Module, concepts: str | os.PathLike[str] | Concepts, href: str | None = None
) -> ReportConcepts:
    """Read and check the report's concepts before any work: their layer must be one of ``model``'s modules.

    Args:
        model: the report's model.
        concepts: a concepts folder or a :class:`~featuremaps.concepts.Concepts`.
        href: how the page links to the folder (default: the folder's path as given).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.concepts.concepts import _tiny_concepts
        >>> load_report_concepts(nn.Sequential(nn.Conv1d(3, 3, 1)), _tiny_concepts())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        featuremaps.errors.FeatureMapsError: these concepts were found in layer 'conv' of tiny, which this model ...
    """
    from ..concepts import Concepts, load_concepts  # lazy: the concepts package (and the atlas) only when used

    folder: Path | None = None
    if isinstance(concepts, Concepts):
        found = concepts
    elif isinstance(concepts, (str, os.PathLike)):
        folder = Path(concepts)
        if not folder.is_dir():
            raise FeatureMapsError(
                f"concepts={str(folder)!r} is not a folder; pass the folder written by discover_concepts(out=...) "
                "or `featuremaps concepts -o`"
            )
        found = load_concepts(folder)
    else:
        raise FeatureMapsError(
            f"concepts={type(concepts).__name__} is neither a concepts folder nor a Concepts object; pass one of those"
        )
    modules = dict(model.named_modules())
    if found.info.module_name not in modules:
        where = f"the concepts in {str(folder)!r}" if folder is not None else "these concepts"
        raise FeatureMapsError(
            f"{where} were found in layer {found.layer!r} of {found.model or 'another model'}, which this model "
            f"does not have (no module {found.info.module_name!r}); pass concepts discovered in this model "
            "(featuremaps concepts IMAGE_DIR --layer L -o DIR)"
        )
    if href is None and folder is not None:
        href = folder.as_posix()
    return ReportConcepts(found, folder, href)


def concept_section(
    model: nn.Module, x: torch.Tensor, predictions: Sequence[dict[str, Any]], linked: ReportConcepts
) -> dict[str, Any] | None:
    """Each concept's importance for each listed class and its heatmap on the photo, ready for the page.

    ``None`` when there is no class to explain.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import featuremaps as fm
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> c = fm.discover_concepts(net, torch.rand(4, 3, 8, 8), "1", n_concepts=2, examples=False, progress=False)
        >>> sec = concept_section(net, torch.rand(1, 3, 8, 8), [{"index": 2, "name": "two", "p": 0.5}],
        ...                       load_report_concepts(net, c))
        >>> sec["layer"], len(sec["classes"][0]["concepts"]), len(sec["maps"])
        ('1', 2, 2)
    """
    if not predictions:
        return None
    concepts = linked.concepts
    classes = [int(p["index"]) for p in predictions]
    xb = x.expand(len(classes), *x.shape[1:])
    try:
        ex = concepts.explain(model, xb, target=classes)
    except FeatureMapsError as exc:
        raise FeatureMapsError(f"the concepts of layer {concepts.layer!r} do not fit this model: {exc}") from None
    importance = ex.importance.detach().float().cpu()
    coeff = ex.coefficients[0].detach().float().cpu()  # the same photo in every row
    out_classes = []
    for i, p in enumerate(predictions):
        row = importance[i]
        magnitude = float(row.abs().sum()) or 1.0
        order = row.argsort(descending=True).tolist()
        out_classes.append({
            "index": p["index"], "name": p["name"], "p": p["p"],
            "total": float(row.sum()), "residual": float(ex.residual[i]),
            "concepts": [{"concept": int(k), "importance": float(row[k]), "share": float(row[k]) / magnitude}
                         for k in order],
        })
    return {
        "layer": concepts.layer,
        "model": concepts.model,
        "images": concepts.num_images,
        "classes": out_classes,
        "maps": _maps(coeff, linked),
        "index": linked.href.rstrip("/") + "/index.html" if linked.href is not None else None,
        "note": (
            f"{concepts.n_concepts} concepts of {concepts.layer}, found in {concepts.num_images} images: each is a "
            "mix of channels that often fire together. The heatmap shows where a concept is present in this photo "
            "(one colour scale for all concepts); the importance is how much it raised (+) or lowered (\u2212) the "
            "class score (gradient \u00d7 presence, summed over the map)."
        ),
    }


def _maps(coeff: torch.Tensor, linked: ReportConcepts) -> list[dict[str, Any]]:
    """One entry per concept: its heatmap (2-D layers; one scale for all), peak, channels, link and examples."""
    concepts = linked.concepts
    spatial = coeff.ndim == 3
    scale = float(coeff.max()) if coeff.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    out = []
    for k in range(concepts.n_concepts):
        png = None
        if spatial:
            q = (np.clip(coeff[k].numpy() / scale, 0.0, 1.0) * 255).round().astype(np.uint8)
            png = png_data_uri(q)
        out.append({
            "concept": k,
            "png": png,
            "peak": float(coeff[k].max()) if coeff[k].numel() else 0.0,
            "channels": [c for c, w in concepts.top_channels(k, 5) if w > 0],
            "href": linked.page(k),
            "sheet": linked.sheet(k),
        })
    return out


def with_concept_layer(layers: Any, linked: ReportConcepts | None) -> Any:
    """The report's layer selection, with the concepts' layer added (so the layer view shows it too).

    Example:
        >>> from featuremaps.concepts.concepts import _tiny_concepts
        >>> with_concept_layer("fc*", ReportConcepts(_tiny_concepts(), None, None))
        ['fc*', 'conv:0']
    """
    if linked is None or layers is None:
        return layers  # (every layer with channels is captured by default)
    wanted = linked.concepts.selector
    if isinstance(layers, str):
        return [layers, wanted] if layers not in (linked.layer, wanted) else layers
    if isinstance(layers, (list, tuple)) and all(isinstance(s, str) for s in layers):
        return [*layers, wanted] if linked.layer not in layers and wanted not in layers else list(layers)
    return layers
