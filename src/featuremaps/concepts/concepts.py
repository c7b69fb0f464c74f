"""The :class:`Concepts` of a layer and the :class:`ConceptExplanation` of a decision.

A concept is a row ``w_k`` of ``components`` ``(K, C)``: a non-negative mix
of the layer's channels. At any map position the layer's activations ``a``
(positive part) are written as ``a ~ sum_k u_k w_k`` with coefficients
``u_k >= 0`` (non-negative least squares, :func:`~.nmf.nnls_codes`); the map
of ``u_k`` over positions is the concept's heatmap.

For a decision (a class score ``y``), with ``g = dy/dA`` at the layer, a
concept's importance is gradient x coefficient summed over positions::

    importance_k = sum_p  u_k[p] * (g[p] . w_k)

(``g[p] . w_k`` is the gradient of ``y`` with respect to ``u_k[p]``; its sum
over positions is ``ConceptExplanation.gradients``). The importances and the
residual (the part of the activations the concepts leave out) add up to the
channels' relevance (:func:`~featuremaps.channel_relevance`); for a global
average pool + linear head they add up to the logit minus its bias.
Deleting a concept removes ``u_k[p] w_k`` from the layer's output for one
forward (standing in for the module; no hooks) and measures the score;
:meth:`ConceptExplanation.sobol` removes random fractions of every concept
and gives CRAFT's total Sobol indices.

A folder written by :meth:`Concepts.save` holds ``concepts.json``,
``concepts.safetensors`` (``components``), ``atlas/`` (the concepts' top
examples: an atlas whose one layer, ``concepts``, has one channel per
concept) and ``index.html``; :func:`load_concepts` reads it back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._outdir import check_output_folder, read_meta, record, replace_folder
from ..atlas import load_atlas
from ..attribution.relevance import channel_relevance
from ..capture import FeatureExtractor
from ..errors import FeatureMapsError
from ..layers import LayerRef
from ..layout import to_canonical
from ..maps import LayerInfo
from .html import render_concepts
from .nmf import nnls_codes

__all__ = ["Concepts", "ConceptExplanation", "load_concepts", "concept_maps", "FORMAT", "ORDERS"]

FORMAT = "featuremaps-concepts/1"
OWNED = ("concepts.json", "concepts.safetensors", "index.html", "atlas")
"""The entries of a concepts folder that :meth:`Concepts.save` writes (and replaces)."""

#: the orders :meth:`ConceptExplanation.deletion_curve` knows
ORDERS = ("importance", "random", "least")


def concept_maps(maps: torch.Tensor, components: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Concept coefficients ``(N, K, *spatial)`` of canonical maps ``(N, C, *spatial)`` (positive part).

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> concept_maps(torch.tensor([[[3.0, -1.0], [2.0, 5.0]]]), w)      # (1, 2 channels, 2 positions)
        tensor([[[3., 0.],
                 [2., 5.]]])
    """
    n, c = int(maps.shape[0]), int(maps.shape[1])
    k = int(components.shape[0])
    if int(components.shape[1]) != c:
        raise FeatureMapsError(f"the maps have {c} channels but the concepts were found in {int(components.shape[1])}")
    spatial = tuple(maps.shape[2:])
    x = maps.reshape(n, c, -1).transpose(1, 2).reshape(-1, c).float().clamp(min=0)
    u = nnls_codes(x, components.to(x.device).float(), iters)
    return u.reshape(n, -1, k).transpose(1, 2).reshape(n, k, *spatial)


def _resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(M, *spatial)`` maps resized to ``size`` (linear / bilinear / trilinear); unchanged when they match."""
    target = tuple(int(s) for s in size)
    if maps.ndim - 1 != len(target) or tuple(maps.shape[1:]) == target or not target:
        return maps
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(target)]
    return F.interpolate(maps[None].float(), size=target, mode=mode, align_corners=False)[0]


@dataclass
class ConceptExplanation:
    """How much each concept drove a decision, and where (see :meth:`Concepts.explain`).

    Attributes:
        coefficients: ``(N, K, *spatial)`` the concepts' coefficients at the layer.
        importance: ``(N, K)`` gradient x coefficient, summed over positions.
        gradients: ``(N, K)`` the gradient of the score w.r.t. each
            concept's coefficients, summed over positions.
        residual: ``(N,)`` the relevance of what the concepts leave out
            (``importance.sum(1) + residual`` is the channels' total relevance).
        target_scores: ``(N,)`` the explained score of each sample.
        input_size: the input's spatial size (the heatmaps' default size).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> from featuremaps.concepts import discover_concepts
        >>> concepts = discover_concepts(net, x, "1", n_concepts=2, examples=False, progress=False)
        >>> ex = concepts.explain(net, x, target=0)
        >>> scores = ex.delete([0, 1])          # both concepts removed: only the residual is left
        >>> ex.top(1)[0][0] in (0, 1), scores.shape
        (True, torch.Size([2]))
    """

    coefficients: torch.Tensor
    importance: torch.Tensor
    gradients: torch.Tensor
    residual: torch.Tensor
    target_scores: torch.Tensor
    input_size: tuple[int, ...]
    _relevance: Any = field(repr=False)
    _components: torch.Tensor = field(repr=False)

    def top(self, k: int = 5, sample: int = 0) -> list[tuple[int, float]]:
        """The ``k`` most important concepts of ``sample``: ``[(concept, importance), ...]``, largest first."""
        n, total = self.importance.shape
        if not 0 <= sample < n:
            raise FeatureMapsError(f"sample={sample} is out of range for {n} samples")
        values, idx = self.importance[sample].float().topk(max(0, min(int(k), total)))
        return [(int(i), float(v)) for i, v in zip(idx.tolist(), values.tolist())]

    def heatmaps(
        self, concepts: Sequence[int] | None = None, sample: int = 0, size: Sequence[int] | None = None,
        kind: str = "coefficients",
    ) -> torch.Tensor:
        """Where each of ``concepts`` is (``kind="coefficients"``, >= 0) or contributed (``"importance"``, signed).

        ``(len(concepts), *size)``; ``size`` defaults to the input's size,
        ``concepts`` to the five most important.
        """
        if kind not in ("coefficients", "importance"):
            raise FeatureMapsError(f"kind={kind!r}; use 'coefficients' or 'importance'")
        chosen = [c for c, _ in self.top(5, sample)] if concepts is None else [int(c) for c in concepts]
        k = int(self.coefficients.shape[1])
        bad = [c for c in chosen if not 0 <= c < k]
        if bad:
            raise FeatureMapsError(f"concepts {bad} are out of range; there are {k} (0..{k - 1})")
        maps = self.coefficients[sample, chosen].float()
        if kind == "importance":
            maps = maps * self._position_gradients()[sample, chosen]
        return _resize(maps, size if size is not None else self.input_size)

    def _position_gradients(self) -> torch.Tensor:
        """``g[p] . w_k``: ``(N, K, *spatial)``."""
        rel = self._relevance
        g = rel._gradients.float()
        w = self._components.to(g.device).float()
        flat = torch.einsum("ncp,kc->nkp", g.reshape(*g.shape[:2], -1), w)
        return flat.reshape(g.shape[0], w.shape[0], *g.shape[2:]).to(self.coefficients.device)

    def delete(self, concepts: Sequence[int] | torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
        """The target scores ``(N,)`` with ``concepts`` removed from the layer's output.

        ``concepts``: the same for every sample (a list), or one boolean mask
        row per sample (``(N, K)``). Removing concept ``k`` subtracts
        ``u_k[p] * w_k`` at every position ``p``.
        """
        n, k = self.importance.shape
        if isinstance(concepts, torch.Tensor) and concepts.dtype == torch.bool:
            if tuple(concepts.shape) != (n, k):
                raise FeatureMapsError(f"a concept mask must be (N, K) = {(n, k)}, got {tuple(concepts.shape)}")
            mask = concepts.cpu()
        else:
            idx = torch.as_tensor(list(concepts) if not isinstance(concepts, torch.Tensor) else concepts).long()
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
                raise FeatureMapsError(f"concepts must be in 0..{k - 1}")
            mask = torch.zeros(n, k, dtype=torch.bool)
            mask[:, idx] = True
        return self._scores_with(mask[:, None, :], batch_size=batch_size)[:, 0]

    def deletion_curve(
        self, order: str = "importance", *, steps: int | None = None, seed: int = 0, batch_size: int = 32
    ) -> torch.Tensor:
        """Target scores ``(N, steps + 1)`` as concepts are removed cumulatively in ``order``.

        Column ``j`` has the first ``round(j * K / steps)`` concepts removed.
        ``order``: ``"importance"`` (most important first, per sample),
        ``"random"`` (a permutation from ``seed``) or ``"least"``.
        """
        if order not in ORDERS:
            raise FeatureMapsError(f"order={order!r}; choose one of {', '.join(ORDERS)}")
        n, k = self.importance.shape
        steps = k if steps is None else int(steps)
        if steps < 1:
            raise FeatureMapsError(f"steps={steps} must be at least 1")
        if order == "random":
            gen = torch.Generator().manual_seed(int(seed))
            ranking = torch.stack([torch.randperm(k, generator=gen) for _ in range(n)])
        else:
            ranking = self.importance.float().cpu().argsort(dim=1, descending=order == "importance")
        rank_of = torch.empty_like(ranking)
        rank_of.scatter_(1, ranking, torch.arange(k).expand(n, k).contiguous())
        masks = torch.stack([rank_of < round(j * k / steps) for j in range(steps + 1)], dim=1)  # (N, S+1, K)
        return self._scores_with(masks, batch_size=batch_size)

    def sobol(self, *, designs: int = 32, seed: int = 0, batch_size: int = 32) -> torch.Tensor:
        """Total Sobol indices ``(N, K)``: each concept's share of the score's variance under random removal.

        As in CRAFT (Fel et al., CVPR 2023): each concept's coefficients are
        scaled by a random factor ``m_k`` in ``[0, 1]`` (quasi-random, a
        scrambled Sobol sequence from ``seed``); the total index of concept
        ``k`` is the expected share of the score's variance that goes when
        ``m_k`` alone is fixed (Jansen's estimator). It counts interactions,
        which the gradient does not; it costs ``designs * (K + 2)`` forwards
        per sample. For a score linear in the coefficients it is
        ``importance_k**2 / sum_j importance_j**2``.
        """
        if isinstance(designs, bool) or not isinstance(designs, int) or designs < 2:
            raise FeatureMapsError(f"designs={designs!r} must be an int >= 2: the random designs per sample")
        n, k = self.importance.shape
        engine = torch.quasirandom.SobolEngine(2 * k, scramble=True, seed=int(seed))
        draws = engine.draw(designs).double()
        a, b = draws[:, :k], draws[:, k:]
        mixed = a[None].repeat(k, 1, 1)  # (K, D, K): design A with column i taken from B
        for i in range(k):
            mixed[i, :, i] = b[:, i]
        keep = torch.cat([a, b, mixed.reshape(k * designs, k)])  # ((K + 2) D, K) kept fractions
        scores = self._scores_with((1 - keep).float()[None].expand(n, -1, -1), batch_size=batch_size).double()
        fa, fb = scores[:, :designs], scores[:, designs:2 * designs]
        fab = scores[:, 2 * designs:].reshape(n, k, designs)
        var = torch.cat([fa, fb], 1).var(1, unbiased=False)
        total = ((fa[:, None, :] - fab) ** 2).mean(2) / 2
        return (total / var.clamp(min=1e-30)[:, None]).float()

    def _scores_with(self, masks: torch.Tensor, *, batch_size: int) -> torch.Tensor:
        """Target scores ``(N, M)`` with the fractions ``masks`` ``(N, M, K)`` of each concept removed."""
        n, m, k = masks.shape
        flat = masks.reshape(n * m, k)
        samples = torch.arange(n).repeat_interleave(m)
        coeff = self.coefficients.reshape(n, k, -1)
        w = self._components

        def remove(view: torch.Tensor, rows: slice) -> None:
            smp = samples[rows]
            chosen = flat[rows].to(view.device, coeff.dtype)  # (B, K)
            u = coeff[smp.to(coeff.device)].to(view.device) * chosen[:, :, None]  # (B, K, P)
            part = torch.einsum("bkp,kc->bcp", u, w.to(view.device, u.dtype))
            view.sub_(part.reshape(view.shape).to(view.dtype))

        return self._relevance._scores_edited(samples, remove, batch_size=batch_size).reshape(n, m)


@dataclass
class Concepts:
    """Concepts found in one layer's activations (see :func:`~featuremaps.discover_concepts`).

    Attributes:
        components: ``(K, C)`` the concepts, non-negative, unit length,
            ordered by their share of the data (largest first).
        layer: the captured layer's name.
        info: the layer's metadata (layout, shape, stride...).
        num_images: images in the pass.
        positions: map positions seen.
        sample_size: positions in the factorized sample.
        relative_error: ``||A - U W|| / ||A||`` on the sample (positive part).
        negative_share: the share of the sampled activation mass that was
            negative (left out of the factorization; 0 after a ReLU).
        model: the model's name.
        input_size: the input size ``(H, W)``, when known.
        skipped: ``(image, reason)`` of unreadable images.
        root: the image folder, when built from one.
        atlas: the concepts' top examples (an :class:`~featuremaps.atlas.Atlas`
            with one layer, ``concepts``, one channel per concept), or ``None``.

    Example:
        >>> c = _tiny_concepts()
        >>> c.n_concepts, c.top_channels(0, 2)
        (2, [(0, 0.7071067690849304), (2, 0.7071067690849304)])
    """

    components: torch.Tensor
    layer: str
    info: LayerInfo
    num_images: int
    positions: int
    sample_size: int
    relative_error: float
    negative_share: float
    model: str = ""
    input_size: tuple[int, int] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    root: str | None = None
    layouts: Mapping[str, str] | None = None
    atlas: Any = None

    @property
    def n_concepts(self) -> int:
        """``K``."""
        return int(self.components.shape[0])

    @property
    def selector(self) -> str:
        """The layer selector that picks exactly the concepts' layer again, its call included.

        A module that runs more than once is captured as ``name`` (its first
        call), ``name:1``...; the bare ``name`` selects every call, so this
        keeps the call index (``"name:0"``).

        Example:
            >>> _tiny_concepts().selector
            'conv:0'
        """
        info = self.info
        return LayerRef(info.module_name, call=info.call_index, key=info.output_key or None).selector

    def _concept(self, concept: int) -> int:
        k = int(concept)
        if not 0 <= k < self.n_concepts:
            n = self.n_concepts
            raise FeatureMapsError(f"concept {concept} is out of range; there are {n} (0..{n - 1})")
        return k

    def coefficients(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-position coefficients ``(N, K, *spatial)`` of the layer's canonical maps ``(N, C, *spatial)``.

        Example:
            >>> import torch
            >>> c = _tiny_concepts()
            >>> [round(v, 4) for v in c.coefficients(torch.tensor([[[2.0], [0.0], [2.0]]])).flatten().tolist()]
            [2.8284, 0.0]
        """
        if maps.ndim < 2 or int(maps.shape[1]) != int(self.components.shape[1]):
            raise FeatureMapsError(
                f"maps of shape {tuple(maps.shape)} do not have the layer's {int(self.components.shape[1])} channels "
                "on axis 1; pass the layer's canonical maps (N, C, ...)"
            )
        return concept_maps(maps, self.components)

    def image_coefficients(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-image coefficients ``(N, K)``: the mean over positions of :meth:`coefficients`."""
        u = self.coefficients(maps)
        return u.reshape(*u.shape[:2], -1).mean(2)

    def top_channels(self, concept: int, n: int = 5) -> list[tuple[int, float]]:
        """The channels that make up a concept most: ``[(channel, weight), ...]`` (weights of a unit vector)."""
        w = self.components[self._concept(concept)]
        values, idx = w.topk(max(0, min(int(n), int(w.numel()))))
        return [(int(i), float(v)) for i, v in zip(idx.tolist(), values.tolist())]

    def top_examples(self, concept: int) -> list[Any]:
        """The concept's top dataset examples (:class:`~featuremaps.atlas.TopExample`: index, score, position)."""
        return list(self._atlas().top_examples("concepts", self._concept(concept)))

    def patch(self, concept: int, rank: int = 0, *, size: int | None = None) -> Any:
        """The image patch (PIL) of the concept's ``rank``-th top example, centred on its maximum."""
        return self._atlas().patch("concepts", self._concept(concept), rank, size=size)

    def image_name(self, index: int) -> str:
        """The name of a dataset example (its file, for image folders)."""
        return str(self._atlas().image_name(index))

    def _atlas(self) -> Any:
        if self.atlas is None:
            raise FeatureMapsError(
                "these concepts have no top examples (discovered with examples=False); run discover_concepts again"
            )
        return self.atlas

    # -- explaining inputs ---------------------------------------------------
    def _maps(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        found: list[torch.Tensor] = []

        def keep(t: torch.Tensor, info: LayerInfo) -> None:
            if info.name == self.layer and not found:
                found.append(t.detach())
            return None

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"layers .* did not run")
            with FeatureExtractor(model, self.info.module_name, reduce=keep, layouts=self.layouts) as fx:
                fx(x)
        if not found:
            raise FeatureMapsError(
                f"layer {self.layer!r} of these concepts did not run on this input; is it the same model?")
        return found[0]

    def heatmaps(
        self, model: nn.Module, x: torch.Tensor, concepts: Sequence[int] | None = None,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Where each concept is in each input: ``(N, len(concepts), *size)``, non-negative.

        ``size`` defaults to the input's spatial size; ``concepts`` to all.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> import featuremaps as fm
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
            >>> c = fm.discover_concepts(net, torch.rand(4, 3, 12, 12), "1", n_concepts=2, examples=False,
            ...                          progress=False)
            >>> c.heatmaps(net, torch.rand(1, 3, 12, 12)).shape
            torch.Size([1, 2, 12, 12])
        """
        u = self.coefficients(self._maps(model, x))
        chosen = list(range(self.n_concepts)) if concepts is None else [self._concept(c) for c in concepts]
        u = u[:, chosen]
        target = tuple(size) if size is not None else tuple(int(s) for s in x.shape[2:])
        return torch.stack([_resize(m, target) for m in u]) if u.shape[0] else u

    def explain(
        self, model: nn.Module, x: torch.Tensor, target: Any = None, *,
        forward_kwargs: Mapping[str, Any] | None = None, output: Any = None, eval_mode: bool = True,
    ) -> ConceptExplanation:
        """Which concepts drove the decision on ``x``, and where (gradient x coefficient; see the module notes).

        Args:
            model: the model the concepts were found in.
            x: the input batch.
            target: what to explain, as for the CAM methods (``None``: each
                sample's top class).
            forward_kwargs: extra keyword arguments for the forward.
            output: output adapter for tuple / dict / Hugging Face outputs.
            eval_mode: run the model in eval mode (restored afterwards).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> import featuremaps as fm
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            ...                     nn.Linear(4, 2))
            >>> c = fm.discover_concepts(net, torch.rand(6, 3, 8, 8), "1", n_concepts=2, examples=False, progress=False)
            >>> ex = c.explain(net, torch.rand(2, 3, 8, 8), target=1)
            >>> ex.importance.shape, ex.heatmaps(sample=1).shape
            (torch.Size([2, 2]), torch.Size([2, 8, 8]))
        """
        rel = channel_relevance(model, x, self.selector, target,
                                forward_kwargs=forward_kwargs, output=output, eval_mode=eval_mode,
                                layouts=self.layouts)
        if rel.layer != self.layer:
            raise FeatureMapsError(
                f"layer {self.layer!r} resolved to {rel.layer!r} in this model; is it the same model?")
        acts = to_canonical(rel._raw, rel.info.layout_spec).float()
        u = self.coefficients(acts)
        ex = ConceptExplanation(
            coefficients=u, importance=torch.empty(0), gradients=torch.empty(0), residual=torch.empty(0),
            target_scores=rel.target_scores, input_size=rel.input_size, _relevance=rel,
            _components=self.components.to(u.device),
        )
        pg = ex._position_gradients()
        ex.gradients = pg.reshape(*pg.shape[:2], -1).sum(2)
        ex.importance = (u * pg).reshape(*u.shape[:2], -1).sum(2)
        ex.residual = rel.scores.float().sum(1).to(ex.importance.device) - ex.importance.sum(1)
        return ex

    # -- saving ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The metadata saved in ``concepts.json``."""
        return {
            "format": FORMAT, "layer": self.layer, "info": self.info.to_json(), "n_concepts": self.n_concepts,
            "num_images": self.num_images, "positions": self.positions, "sample_size": self.sample_size,
            "relative_error": self.relative_error, "negative_share": self.negative_share, "model": self.model,
            "input_size": list(self.input_size) if self.input_size else None,
            "skipped": [list(s) for s in self.skipped], "root": self.root,
            "layouts": dict(self.layouts) if self.layouts else None,
        }

    def save(self, directory: str | os.PathLike[str], *, patch_size: int = 64, patches: bool = True) -> Path:
        """Write ``concepts.json``, ``concepts.safetensors``, ``atlas/`` and ``index.html`` into ``directory``.

        Atomic, and under the output-folder rules (:mod:`featuremaps._outdir`):
        ``directory`` must be new, empty, or hold only files featuremaps
        wrote; only the concepts' own entries are replaced.

        Example:
            >>> import tempfile, pathlib
            >>> out = _tiny_concepts().save(pathlib.Path(tempfile.mkdtemp()) / "concepts")
            >>> sorted(p.name for p in out.iterdir())
            ['.featuremaps', 'concepts.json', 'concepts.safetensors', 'index.html']
        """
        from safetensors.torch import save_file

        target = Path(directory)
        check_output_folder(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            save_file({"components": self.components.detach().float().cpu().contiguous()},
                      str(tmp / "concepts.safetensors"), metadata={"format": FORMAT})
            (tmp / "concepts.json").write_text(
                json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
            if self.atlas is not None:
                self.atlas.save(tmp / "atlas", patch_size=patch_size, patches=patches)
            (tmp / "index.html").write_text(render_concepts(self, tmp), encoding="utf-8")
            record(tmp)
            kept = replace_folder(tmp, target, OWNED)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own staging folder, never the user's
            raise
        if kept:
            warnings.warn(f"files that appeared in {str(target)!r} while it was written were kept aside: "
                          f"{', '.join(Path(k).name for k in kept[:3])}", UserWarning, stacklevel=2)
        return target

    def __repr__(self) -> str:
        return (f"Concepts(layer={self.layer!r}, n_concepts={self.n_concepts}, "
                f"channels={int(self.components.shape[1])}, "
                f"images={self.num_images}, relative_error={self.relative_error:.3g})")


def load_concepts(directory: str | os.PathLike[str]) -> Concepts:
    """Read a folder written by :meth:`Concepts.save` (no pickle).

    Example:
        >>> import tempfile, pathlib
        >>> folder = _tiny_concepts().save(pathlib.Path(tempfile.mkdtemp()) / "concepts")
        >>> load_concepts(folder).components.shape
        torch.Size([2, 3])
    """
    folder = Path(directory)
    meta, data_path = read_meta(folder, "concepts", FORMAT, "Concepts.save or `featuremaps concepts -o`")
    from safetensors.torch import load_file

    try:
        components = load_file(str(data_path))["components"].float()
        info = LayerInfo.from_json(meta["info"])
    except Exception as exc:  # noqa: BLE001 - safetensors and a damaged json raise several types
        raise FeatureMapsError(f"cannot read {str(folder)!r}: {exc}; the concepts folder is damaged") from None
    atlas = None
    if (folder / "atlas" / "atlas.json").is_file():
        atlas = load_atlas(folder / "atlas")
        atlas.unit = "concept"
    size = meta.get("input_size")
    return Concepts(
        components=components, layer=str(meta["layer"]), info=info, num_images=int(meta["num_images"]),
        positions=int(meta["positions"]), sample_size=int(meta["sample_size"]),
        relative_error=float(meta["relative_error"]), negative_share=float(meta["negative_share"]),
        model=str(meta.get("model", "")), input_size=(int(size[0]), int(size[1])) if size else None,
        skipped=[(str(a), str(b)) for a, b in meta.get("skipped", [])], root=meta.get("root"),
        layouts=meta.get("layouts") or None, atlas=atlas,
    )


def _tiny_concepts() -> Concepts:
    """Two concepts over three channels, for the examples."""
    info = LayerInfo("conv", "conv", 0, "", "Conv1d", "NCL", (1, 3, 1), (1, 3, 1), 3, (1,), (1.0,))
    s = 0.5 ** 0.5
    return Concepts(components=torch.tensor([[s, 0.0, s], [0.0, 1.0, 0.0]]), layer="conv", info=info, num_images=1,
                    positions=1, sample_size=1, relative_error=0.0, negative_share=0.0, model="tiny")
