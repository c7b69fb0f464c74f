"""Targets: which score of the model output an attribution explains.

A target turns the model output into one score per sample. Everything that
``target=`` accepts (in the CAM methods, the metrics and the sanity checks) is
resolved by :func:`resolve_target` into a :class:`Target`:

==============================  =============================================
``target=``                     meaning
==============================  =============================================
``None``                        each sample's top class (raw logit)
``281``                         class 281 for every sample
``[281, 7]`` / a 1-D tensor     one class per sample (length must be N)
``TopKTarget(2)``               each sample's second-best class
``ClassTarget(281)``            the logit (or ``softmax=True``: probability)
``SegmentationTarget(c, m)``    sum of class ``c``'s scores over a region
``DetectionTarget(box=...)``    score of the detection matching a box/label
a callable ``f(output)``        applied to the whole (adapted) batch output,
                                returns one score per sample
a list of N callables           pytorch-grad-cam style: ``f_i(output[i])``
==============================  =============================================

A list whose length is not the batch size is an error, never a silent
truncation. Model outputs that are not tensors are first reduced by an
*output adapter* (:func:`adapt_output`): Hugging Face ``ModelOutput`` and
dicts give their ``logits`` (or torchvision segmentation's ``out``), tuples
their first tensor; detection outputs (a list of dicts per image) pass as
they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from ._errors import AttributionError, TargetError
from .outputs import OutputAdapter, _batch_size, _describe, adapt_output, take_rows

__all__ = [
    "OutputAdapter",
    "TargetLike",
    "Target",
    "ClassTarget",
    "TopKTarget",
    "SegmentationTarget",
    "DetectionTarget",
    "CallableTarget",
    "PerSampleTarget",
    "adapt_output",
    "resolve_target",
    "take_rows",
]

TargetLike = Any
"""Anything ``target=`` accepts; see the table in :mod:`featuremaps.attribution.targets`."""


_INT64 = (-(2**63), 2**63 - 1)


def _index_tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` (an int, a sequence of ints or a tensor) as a tensor, refusing ints past 64 bits by name."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, int) and not _INT64[0] <= v <= _INT64[1]:
            raise TargetError(
                f"{what} {v} is out of range (larger than any model's number of classes); "
                "pass an index 0..num_classes-1"
            )
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise TargetError(
            f"{what} {value!r} is not an integer index or a list of them ({exc}); pass ints 0..num_classes-1"
        ) from exc


class Target:
    """Base class of targets: one score per sample from the adapted model output.

    Subclasses implement :meth:`score`; :meth:`resolve` turns a target that
    depends on the unperturbed output (the top class, the predicted region)
    into a fixed one, so that perturbed forwards (Score-CAM, metrics) score
    the same thing.

    Example:
        >>> import torch
        >>> class Mean(Target):
        ...     def score(self, output, samples=None):
        ...         return output.mean(dim=1)
        >>> Mean()(torch.ones(2, 4)).tolist()
        [1.0, 1.0]
    """

    #: The class index per sample, when the target is a class (else ``None``).
    classes: torch.Tensor | None = None

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Scores, one per row of ``output``.

        Args:
            output: the adapted output of a batch of rows.
            samples: for each row, the index of the sample (of the original
                batch) it belongs to; ``None`` means row ``i`` is sample ``i``.

        Returns:
            A 1-D tensor with one score per row.
        """
        raise NotImplementedError

    def resolve(self, output: Any, n: int) -> Target:
        """A fixed version of this target for the unperturbed output of ``n`` samples."""
        return self

    def __call__(self, output: Any) -> torch.Tensor:
        """The scores of a batch output (one per sample)."""
        return self.score(output)


def _rows(samples: torch.Tensor | None, n_rows: int, device: torch.device) -> torch.Tensor:
    if samples is None:
        return torch.arange(n_rows, device=device)
    return samples.to(device)


class ClassTarget(Target):
    """The score of a class: the raw logit, or its softmax probability.

    Args:
        classes: one class index for every sample, or one per sample (a
            sequence or 1-D tensor).
        softmax: score the probability ``softmax(output)[c]`` instead of the logit.

    Example:
        >>> import torch
        >>> out = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
        >>> ClassTarget(1)(out).tolist()
        [2.0, 0.0]
        >>> ClassTarget([1, 0])(out).tolist()
        [2.0, 3.0]
        >>> round(float(ClassTarget(1)(out[0])), 1)   # one sample, pytorch-grad-cam style
        2.0
    """

    def __init__(self, classes: int | Sequence[int] | torch.Tensor, *, softmax: bool = False) -> None:
        if isinstance(classes, bool):
            raise TargetError(f"target={classes!r} is a bool; pass a class index (int)")
        t = _index_tensor(classes, "target class")
        if t.is_floating_point() or t.is_complex() or t.ndim > 1:
            raise TargetError(
                f"class targets must be integer indices (one, or one per sample); got "
                f"{t.dtype} of shape {tuple(t.shape)}"
            )
        self.indices: torch.Tensor = t.long()
        self.classes = self.indices
        self.softmax = softmax

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Gather the class score of each row."""
        if not isinstance(output, torch.Tensor) or output.ndim not in (1, 2):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise TargetError(
                f"a class target needs (N, classes) scores but the model output is {shape}; "
                "use SegmentationTarget or DetectionTarget for those outputs, a callable target, "
                "or output= to select the logits"
            )
        if output.ndim == 1:  # one sample without its batch axis (pytorch-grad-cam targets do this)
            if self.indices.ndim != 0:
                raise TargetError("a per-sample class list needs a batched (N, classes) output")
            scores = output.softmax(0) if self.softmax else output
            return scores[int(self.indices)]
        classes = self.indices.to(output.device)
        k = output.shape[1]
        if bool(((classes < 0) | (classes >= k)).any()):
            raise TargetError(
                f"target class {classes.tolist()} is out of range for an output with {k} classes; "
                f"use 0..{k - 1}"
            )
        scores = output.softmax(1) if self.softmax else output
        if classes.ndim == 0:
            return scores[:, classes]
        rows = _rows(samples, output.shape[0], output.device)
        if samples is None and classes.shape[0] != output.shape[0]:
            raise TargetError(
                f"target has {classes.shape[0]} classes but the batch has {output.shape[0]} samples; "
                "pass one class per sample, or a single class for all"
            )
        return scores.gather(1, classes[rows][:, None]).squeeze(1)

    def with_softmax(self, softmax: bool = True) -> ClassTarget:
        """The same classes, scored as probabilities (or logits)."""
        return ClassTarget(self.indices, softmax=softmax)

    def __repr__(self) -> str:
        c = self.indices
        shown = int(c) if c.ndim == 0 else c.tolist()
        return f"ClassTarget({shown}{', softmax=True' if self.softmax else ''})"


class TopKTarget(Target):
    """Each sample's k-th highest-scoring class (``k=1``: the predicted class).

    It resolves, on the unperturbed output, to a :class:`ClassTarget`.

    Args:
        k: the rank (1-based).
        softmax: score probabilities instead of logits.

    Example:
        >>> import torch
        >>> out = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
        >>> TopKTarget(2).resolve(out, 2).classes.tolist()
        [2, 2]
    """

    def __init__(self, k: int = 1, *, softmax: bool = False) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TargetError(f"TopKTarget(k={k!r}): k is a rank, 1 for the top class, 2 for the second...")
        self.k = k
        self.softmax = softmax

    def resolve(self, output: Any, n: int) -> Target:
        """The k-th class of each sample, as a :class:`ClassTarget`."""
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            raise TargetError(
                "a top-k (or default) target needs (N, classes) scores; for segmentation, detection or "
                "other outputs pass target= explicitly (SegmentationTarget, DetectionTarget, a callable)"
            )
        if self.k > output.shape[1]:
            raise TargetError(f"TopKTarget(k={self.k}) but the output has only {output.shape[1]} classes")
        classes = output.detach().topk(self.k, dim=1).indices[:, self.k - 1]
        return ClassTarget(classes, softmax=self.softmax)

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the k-th class of each row (resolved on ``output`` itself)."""
        return self.resolve(output, _batch_size(output) or 1).score(output, samples)

    def __repr__(self) -> str:
        return f"TopKTarget({self.k})"


class SegmentationTarget(Target):
    """The summed score of one class over a region of a segmentation output.

    Args:
        category: the class channel of the ``(N, K, H, W)`` (or 1D/3D) output.
        mask: the region: a boolean/float map of the output's spatial size,
            or one per sample ``(N, H, W)``. ``None`` uses the pixels that the
            unperturbed output assigns to ``category`` (its argmax).

    Example:
        >>> import torch
        >>> out = torch.zeros(1, 2, 2, 2); out[0, 1, 0, 0] = 3.0; out[0, 1, 1, 1] = 1.0
        >>> SegmentationTarget(1, mask=torch.tensor([[True, False], [False, False]]))(out).tolist()
        [3.0]
        >>> SegmentationTarget(1).resolve(out, 1)(out).tolist()   # predicted pixels of class 1
        [4.0]
    """

    def __init__(self, category: int, mask: torch.Tensor | Any = None) -> None:
        self.category = int(_index_tensor(category, "SegmentationTarget category"))
        self.mask = None if mask is None else torch.as_tensor(mask)

    def resolve(self, output: Any, n: int) -> Target:
        """Fix the region to the predicted pixels when no mask was given."""
        self._check(output)
        if self.mask is not None:
            return self
        return SegmentationTarget(self.category, output.detach().argmax(1) == self.category)

    def _check(self, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim < 3:
            raise TargetError(
                "SegmentationTarget needs an (N, classes, H, W) output; "
                f"got {_describe(output)} (use output= to select it)"
            )
        if not 0 <= self.category < output.shape[1]:
            raise TargetError(f"SegmentationTarget category {self.category} is out of range for {output.shape[1]} classes")

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of the category's scores inside the region, per row."""
        self._check(output)
        region = output[:, self.category]
        spatial = tuple(range(1, region.ndim))
        if self.mask is None:
            return region.sum(dim=spatial)
        mask = self.mask.to(device=region.device, dtype=region.dtype)
        if mask.ndim == region.ndim:  # one mask per sample
            mask = mask[_rows(samples, region.shape[0], region.device)]
        if mask.shape[-len(spatial):] != region.shape[1:]:
            raise TargetError(
                f"SegmentationTarget mask has shape {tuple(self.mask.shape)} but the output's spatial size is "
                f"{tuple(region.shape[1:])}; pass a mask of the output's size"
            )
        return (region * mask).sum(dim=spatial)

    def __repr__(self) -> str:
        return f"SegmentationTarget({self.category})"


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a`` (4,) against ``b`` (M, 4), (x0, y0, x1, y1)."""
    lt = torch.maximum(a[:2], b[:, :2])
    rb = torch.minimum(a[2:], b[:, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[2] - a[0]).clamp_min(0) * (a[3] - a[1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


class DetectionTarget(Target):
    """The score of one detection of a detection model (torchvision style output).

    The output is a list with one dict per image holding ``boxes`` (M, 4),
    ``scores`` (M,) and ``labels`` (M,). The explained detection is the one
    whose box overlaps ``box`` most (IoU at least ``iou_threshold``) among
    those with ``label``; its score counts, 0 if none matches. Without
    ``box`` and ``label``, it is each image's highest-scoring detection,
    fixed (box and label) on the unperturbed output so that perturbed
    forwards follow the same object.

    Args:
        box: ``(x0, y0, x1, y1)``, or one box per image ``(N, 4)``.
        label: the class label to match (one, or one per image).
        iou_threshold: minimal overlap with ``box``.

    Example:
        >>> import torch
        >>> out = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
        ...         "scores": torch.tensor([0.9, 0.7]), "labels": torch.tensor([1, 2])}]
        >>> DetectionTarget(box=[19, 21, 30, 30])(out).mul(10).round().tolist()
        [7.0]
        >>> DetectionTarget().resolve(out, 1)(out).mul(10).round().tolist()
        [9.0]
    """

    def __init__(
        self,
        box: Sequence[float] | torch.Tensor | None = None,
        label: int | Sequence[int] | torch.Tensor | None = None,
        *,
        iou_threshold: float = 0.5,
    ) -> None:
        self.box = None if box is None else torch.as_tensor(box, dtype=torch.float32)
        self.label = None if label is None else _index_tensor(label, "DetectionTarget label").long()
        self.iou_threshold = float(iou_threshold)

    def resolve(self, output: Any, n: int) -> Target:
        """Fix each image's best detection when neither box nor label is given."""
        dets = self._check(output)
        if self.box is not None or self.label is not None:
            return self
        boxes, labels = [], []
        for d in dets:
            if len(d["scores"]) == 0:
                boxes.append(torch.full((4,), float("nan")))
                labels.append(-1)
                continue
            best = int(d["scores"].detach().argmax())
            boxes.append(d["boxes"][best].detach().float().cpu())
            labels.append(int(d["labels"][best]))
        return DetectionTarget(torch.stack(boxes), torch.tensor(labels), iou_threshold=self.iou_threshold)

    @staticmethod
    def _check(output: Any) -> list[Mapping[str, torch.Tensor]]:
        if not isinstance(output, (list, tuple)) or not all(
            isinstance(d, Mapping) and {"boxes", "scores", "labels"} <= set(d) for d in output
        ):
            raise TargetError(
                "DetectionTarget needs a list of dicts with 'boxes', 'scores' and 'labels' (torchvision "
                f"detection output); got {_describe(output)}"
            )
        return list(output)

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """The matched detection's score per image (0 where none matches)."""
        dets = self._check(output)
        rows = _rows(samples, len(dets), torch.device("cpu")).tolist()
        out: list[torch.Tensor] = []
        for j, d in enumerate(dets):
            i = rows[j]
            scores = d["scores"]
            ok = torch.ones_like(scores, dtype=torch.bool)
            # rank candidates by overlap with the box, else by their own score
            key = scores.detach().float()
            if self.label is not None:
                label = self.label if self.label.ndim == 0 else self.label[i]
                ok &= d["labels"].to(scores.device) == label.to(scores.device)
            if self.box is not None:
                box = self.box if self.box.ndim == 1 else self.box[i]
                if bool(torch.isnan(box).any()):  # the image had no detection to follow
                    ok &= False
                else:
                    iou = _box_iou(box.to(d["boxes"].device, torch.float32), d["boxes"].detach().float())
                    ok &= iou >= self.iou_threshold
                    key = iou
            if not bool(ok.any()):
                out.append(scores.sum() * 0.0)
                continue
            best = int(torch.where(ok, key, torch.full_like(key, -float("inf"))).argmax())
            out.append(scores[best])
        return torch.stack(out)

    def __repr__(self) -> str:
        return f"DetectionTarget(box={None if self.box is None else self.box.tolist()}, label={self.label})"


class CallableTarget(Target):
    """A plain callable applied to the whole (adapted) batch output.

    The callable must return one score per sample (shape ``(N,)``); a single
    number is accepted for a batch of one.

    Example:
        >>> import torch
        >>> CallableTarget(lambda out: out[:, 0] - out[:, 1])(torch.tensor([[3.0, 1.0]])).tolist()
        [2.0]
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Call the function and check it gave one score per row."""
        value = torch.as_tensor(self.fn(output))
        n = _batch_size(output)
        if value.ndim == 0 and n == 1:
            return value.reshape(1)
        if value.ndim != 1 or (n is not None and value.shape[0] != n):
            raise TargetError(
                f"the target callable returned shape {tuple(value.shape)} for a batch of {n}; return one "
                "score per sample (shape (N,)), or pass a list of N callables (one per sample)"
            )
        return value

    def __repr__(self) -> str:
        return f"CallableTarget({getattr(self.fn, '__name__', type(self.fn).__name__)})"


class PerSampleTarget(Target):
    """One target per sample, pytorch-grad-cam style: ``targets[i](output[i])``.

    A plain callable gets sample ``i``'s output without the batch axis (as
    pytorch-grad-cam's ``ClassifierOutputTarget`` expects); a :class:`Target`
    gets a batch of one.

    Example:
        >>> import torch
        >>> t = PerSampleTarget([lambda o: o[0], lambda o: o[1]])
        >>> t(torch.tensor([[5.0, 6.0], [7.0, 8.0]])).tolist()
        [5.0, 8.0]
    """

    def __init__(self, targets: Sequence[Callable[[Any], Any]]) -> None:
        self.targets = list(targets)

    def resolve(self, output: Any, n: int) -> Target:
        """Resolve the :class:`Target` entries on their own sample's output."""
        resolved: list[Callable[[Any], Any]] = []
        for i, t in enumerate(self.targets):
            if isinstance(t, Target):
                resolved.append(t.resolve(take_rows(output, torch.tensor([i])), 1))
            else:
                resolved.append(t)
        return PerSampleTarget(resolved)

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        """Call each row's target on that row's output."""
        n = _batch_size(output)
        if n is None:
            raise TargetError(f"per-sample targets need a batched output; got {_describe(output)}")
        rows = list(range(n)) if samples is None else samples.tolist()
        if samples is None and n != len(self.targets):
            raise TargetError(
                f"target has {len(self.targets)} entries but the batch has {n} samples; "
                "pass one target per sample"
            )
        scores = []
        for j, i in enumerate(rows):
            t = self.targets[i]
            if isinstance(t, Target):
                value = torch.as_tensor(t.score(take_rows(output, torch.tensor([j])))).reshape(-1)[0]
            else:
                value = torch.as_tensor(t(output[j])).reshape(-1)
                if value.numel() != 1:
                    raise TargetError(
                        f"the target for sample {i} returned {value.numel()} numbers; return one score"
                    )
                value = value[0]
            scores.append(value)
        return torch.stack(scores)

    @property
    def classes(self) -> torch.Tensor | None:  # type: ignore[override]
        """The class per sample when every entry is a single-class :class:`ClassTarget`."""
        found = []
        for t in self.targets:
            c = getattr(t, "classes", None) if isinstance(t, ClassTarget) else None
            if c is None or c.ndim != 0:
                return None
            found.append(int(c))
        return torch.tensor(found)

    def __repr__(self) -> str:
        return f"PerSampleTarget({len(self.targets)} targets)"


def resolve_target(target: TargetLike, output: Any, n: int) -> Target:
    """Turn anything ``target=`` accepts into a fixed :class:`Target` for ``n`` samples.

    Args:
        target: see the table in :mod:`featuremaps.attribution.targets`.
        output: the adapted output of the unperturbed forward.
        n: the batch size.

    Returns:
        A resolved :class:`Target`.

    Raises:
        TargetError: a list or tensor whose length is not ``n``, or an
            unsupported kind of target.
        AttributionError: an empty batch (``n == 0``).

    Example:
        >>> import torch
        >>> out = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
        >>> resolve_target(None, out, 2).classes.tolist()
        [1, 0]
        >>> resolve_target(torch.tensor([0, 0]), out, 2)(out).tolist()
        [0.0, 5.0]
    """
    if n == 0:
        # Not a TargetError: class-agnostic methods fall back on a missing target, not on an empty batch.
        raise AttributionError(
            "the input batch is empty (0 samples); pass at least one input, e.g. x of shape (1, C, H, W)"
        )
    if target is None:
        return TopKTarget(1).resolve(output, n)
    if isinstance(target, Target):
        return target.resolve(output, n)
    if isinstance(target, bool):
        raise TargetError(f"target={target!r} is a bool; pass a class index")
    if isinstance(target, int):
        return ClassTarget(target)
    if isinstance(target, torch.Tensor) or _is_array(target):
        t = torch.as_tensor(target)
        if t.ndim == 0:
            return ClassTarget(int(t))
        if t.ndim == 1:
            if t.shape[0] != n:
                raise TargetError(
                    f"target has {t.shape[0]} entries but the batch has {n} samples; "
                    "pass one class per sample, or a single int for all"
                )
            return ClassTarget(t)
        raise TargetError(f"target tensor of shape {tuple(t.shape)}: pass an int or a 1-D tensor of N classes")
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise TargetError(
                f"target has {len(target)} entries but the batch has {n} samples; "
                "pass one target per sample, or a single target for all"
            )
        if all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            return ClassTarget(list(target))
        if all(callable(t) for t in target):
            return PerSampleTarget(list(target)).resolve(output, n)
        raise TargetError(
            "a target list must hold only class indices or only callables (one per sample); "
            f"got {[type(t).__name__ for t in target][:5]}"
        )
    if callable(target):
        return CallableTarget(target)
    raise TargetError(
        f"target={target!r} is not supported; pass None (top class), an int, a list or tensor of N ints, "
        "a Target (TopKTarget, SegmentationTarget, DetectionTarget) or a callable"
    )


def _is_array(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "shape")
