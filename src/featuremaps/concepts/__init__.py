"""Concepts discovered from data: directions in a layer's channel space that the activations are made of.

:func:`discover_concepts` factors a layer's activations over a dataset (one
streaming pass; non-negative matrix factorization, as in CRAFT) into ``K``
concepts, each a non-negative mix of channels, with their top examples
(the atlas's machinery). :meth:`Concepts.explain` says which concepts drove
a decision and where; :meth:`Concepts.save` / :func:`load_concepts` keep them.

Example:
    >>> import featuremaps as fm
    >>> concepts = fm.discover_concepts(fm.load_model(), "photos/", "_act_head", n_concepts=10)  # doctest: +SKIP
    >>> concepts.explain(model, x).top(3)                                                       # doctest: +SKIP
"""

from __future__ import annotations

from .build import DEFAULT_SAMPLE_BYTES, discover_concepts
from .concepts import ConceptExplanation, Concepts, concept_maps, load_concepts
from .nmf import PositionSample, nmf, nnls_codes

__all__ = [
    "discover_concepts",
    "load_concepts",
    "Concepts",
    "ConceptExplanation",
    "concept_maps",
    "nmf",
    "nnls_codes",
    "PositionSample",
    "DEFAULT_SAMPLE_BYTES",
]
