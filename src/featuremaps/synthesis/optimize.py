"""``synthesize``: optimize images until they make chosen channels fire.

Feature visualization by optimization (Erhan et al. 2009; Olah, Mordvintsev
& Schubert, "Feature Visualization", Distill 2017): start from a faint
random image and follow the gradient of an objective - usually the mean
activation of one channel - with respect to the image, through a
parameterization that favours natural images (:mod:`.param`) and random
transformations that demand robustness (:mod:`.transforms`).

How it runs:

* the layer outputs are read through the capture engine
  (:class:`~featuremaps.capture.FeatureExtractor` with ``keep_graph=True``),
  so hooks exist only during the call and the model's training flags,
  ``requires_grad`` and ``.grad`` are restored afterwards, also after an
  error or Ctrl-C. The model runs in eval mode with its parameters frozen
  (no weight gradients are computed);
* when no objective reads the model output, the forward stops right after
  the last target layer (the engine's reducer raises a private signal once
  every target map is in hand), so a mid-level layer costs only the layers
  before it;
* many targets are optimized together as one batch, one image per target
  (and sample) - on a CPU in batches of :data:`CPU_BATCH` images, which run
  faster there than one big batch; every image draws its initial values and its transforms
  from its own ``torch.Generator`` seeded by ``seed`` and its sample index,
  so the batched and the one-at-a-time runs give the same images up to
  floating-point rounding, and the global random state is never used.

Targets are parsed in :mod:`.targets`, results are built in :mod:`.result`;
progress is reported through :mod:`featuremaps._progress` (the
``"synthesis"`` stage, in optimization steps).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from featuremaps.synthesis import synthesize
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    >>> img = synthesize(model, "1:2", steps=4, size=32, progress=False)
    >>> img.size, img.mode
    ((32, 32), 'RGB')
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .._progress import Progress, ProgressArg, reporter
from ..capture import FeatureExtractor
from ..maps import LayerInfo
from ..models import IMAGENET_MEAN, IMAGENET_STD, preprocess_for
from .objectives import Activations, Channel, Objective, SynthesisError, layer_selector
from .param import PARAMS, ImageParam, _size2, make_param
from .result import SynthesisResult, tile_images, to_images
from .targets import PendingRange, TargetLike, check_layers, expand, parse_target, parse_targets
from .transforms import Transforms, TransformsLike, get_transforms

__all__ = ["SynthesisResult", "synthesize", "parse_target", "tile_images", "TargetLike", "CPU_BATCH"]


#: Images per batch for ``batch=True`` on a CPU. Per image and step, batches
#: of 2-8 images ran 2-3x faster than one batch of 80 on a 2-core CPU
#: (EfficientNet-Lite0 to ``_blocks.5``, 128 px): big batches spill the caches.
CPU_BATCH = 8


class _StopForward(Exception):
    """Raised inside the engine's reducer once every needed map is captured."""


class _Collector:
    """The engine reducer that keeps the maps the objectives read (and can stop the forward)."""

    name = "synthesis"

    def __init__(self, keys: frozenset[str], stop: bool) -> None:
        self.keys = keys
        self.stop = stop
        self.maps: dict[str, torch.Tensor] = {}
        self.infos: dict[str, LayerInfo] = {}

    def clear(self) -> None:
        self.maps = {}

    def __call__(self, t: torch.Tensor, info: LayerInfo) -> torch.Tensor | None:
        if info.name not in self.keys:
            return None
        self.maps[info.name] = t
        self.infos[info.name] = info
        if self.stop and len(self.maps) == len(self.keys):
            raise _StopForward
        return t  # kept by the engine, so later in-place ops get a clone



# --------------------------------------------------------------------------- helpers


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    own = next((t.device for t in (*model.parameters(), *model.buffers())), None)
    if device is None:
        return own if own is not None else torch.device("cpu")
    try:
        want = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SynthesisError(f"device={device!r} is not a device ({exc}); use e.g. 'cpu' or 'cuda'") from None
    if own is not None and (own.type != want.type or (want.index is not None and own.index != want.index)):
        raise SynthesisError(
            f"device={str(want)!r} but the model is on {str(own)!r}; move the model first "
            f"(model.to({str(want)!r})) or leave device=None"
        )
    return own if own is not None else want


def _normalization(preprocess: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if preprocess is None:
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    card = getattr(preprocess, "card", preprocess)
    mean, std = getattr(card, "mean", None), getattr(card, "std", None)
    if mean is None or std is None:
        raise SynthesisError(
            f"preprocess= got {type(preprocess).__name__}, which has no model card with mean/std; pass the "
            "preprocess returned by fm.load_model (or its .card)"
        )
    if len(tuple(mean)) != 3:
        raise SynthesisError(
            f"synthesis draws RGB images, but the model card has {len(tuple(mean))} input channel(s); "
            "synthesize works with 3-channel models only"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _sample_seed(seed: int, sample: int) -> int:
    """The seed of a target's sample ``sample``: ``seed`` itself for the first one."""
    return (int(seed) + sample * 0x9E3779B97F4A7C15) % (2**63)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise SynthesisError(f"{name}={value!r} must be an int >= {minimum}")
    return int(value)




# --------------------------------------------------------------------------- the optimization


@dataclass
class _Setup:
    model: nn.Module
    samples: int
    steps: int
    size: tuple[int, int]
    param: str
    decorrelate: bool
    transforms: Transforms | Callable[[torch.Tensor], torch.Tensor]
    lr: float
    seed: int
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reference: dict[str, tuple[int, ...]]
    callback: Callable[[int, torch.Tensor], Any] | None


def _make(setup: _Setup, n_objectives: int) -> tuple[ImageParam, list[torch.Generator]]:
    gens = [
        torch.Generator().manual_seed(_sample_seed(setup.seed, s))
        for _ in range(n_objectives)
        for s in range(setup.samples)
    ]
    param = make_param(
        setup.param, len(gens), setup.size, generators=gens, decorrelate=setup.decorrelate,
        mean=setup.mean, std=setup.std, device=setup.device,
    )
    return param, gens


def _evaluate(objectives: Sequence[Objective], samples: int, acts: Activations) -> torch.Tensor:
    values = [obj(acts.slice(i * samples, (i + 1) * samples)) for i, obj in enumerate(objectives)]
    return torch.cat([v.float() for v in values])


def _extractor(model: nn.Module, collector: _Collector, keep_graph: bool) -> FeatureExtractor:
    selectors = sorted({layer_selector(k) for k in collector.keys})
    return FeatureExtractor(model, selectors, reduce=collector, keep_graph=keep_graph)


def _forward(fx: FeatureExtractor, collector: _Collector, x: torch.Tensor) -> torch.Tensor | None:
    collector.clear()
    try:
        fx(x)
    except _StopForward:
        return None
    return _first_tensor(fx.output)


def _run_chunk(
    setup: _Setup, objectives: list[Objective], advance: Callable[[float], None], history: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Optimize the images of ``objectives``; returns (pixels, activations, steps done, interrupted)."""
    samples = setup.samples
    param, gens = _make(setup, len(objectives))
    transforms = setup.transforms
    tparams: torch.Tensor | None = None
    if isinstance(transforms, Transforms) and transforms.is_affine:
        tparams = torch.stack([transforms.draw(setup.steps, g) for g in gens], dim=1)  # (steps, n, 4)
    keys = frozenset().union(*(o.layers for o in objectives))
    needs_output = any(o.needs_output for o in objectives)
    collector = _Collector(keys, stop=not needs_output)
    optimizer = torch.optim.Adam(param.parameters(), lr=setup.lr)
    done = 0
    interrupted = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"layers .* did not run", category=UserWarning)
        with _extractor(setup.model, collector, keep_graph=True) as fx, torch.enable_grad():
            for p in setup.model.parameters():  # restored by the engine on exit
                p.requires_grad_(False)
            try:
                for step in range(setup.steps):
                    pixels = param()
                    if isinstance(transforms, Transforms):
                        seen = transforms(pixels, tparams[step] if tparams is not None else pixels.new_zeros(0, 4))
                    else:
                        seen = transforms(pixels)
                    output = _forward(fx, collector, param.normalize(seen))
                    values = _evaluate(objectives, samples, Activations(collector.maps, output, setup.reference))
                    if not values.requires_grad:
                        raise SynthesisError(
                            f"the objectives {', '.join(map(repr, objectives[:3]))} do not depend on the image "
                            "(no gradient reaches it); check the targets read layers the input flows through"
                        )
                    grads = torch.autograd.grad(-values.sum(), param.parameters(), allow_unused=True)
                    for t, g in zip(param.parameters(), grads):
                        t.grad = torch.zeros_like(t) if g is None else g
                    optimizer.step()
                    collector.clear()
                    row = values.detach().to("cpu", torch.float32)
                    history[step] = row
                    done = step + 1
                    advance(float(row.mean()))
                    if setup.callback is not None:
                        setup.callback(step, row)
            except KeyboardInterrupt:
                interrupted = True
    with torch.no_grad():
        pixels = param().detach()
    activations = torch.full((pixels.shape[0],), float("nan"))
    try:
        activations = _final_values(setup, objectives, param, pixels)
    except KeyboardInterrupt:
        interrupted = True
    return pixels.to("cpu", torch.float32), activations, done, interrupted


def _final_values(setup: _Setup, objectives: list[Objective], param: ImageParam, pixels: torch.Tensor) -> torch.Tensor:
    """Each image's objective value without transforms (one forward, no gradients)."""
    keys = frozenset().union(*(o.layers for o in objectives))
    collector = _Collector(keys, stop=not any(o.needs_output for o in objectives))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"layers .* did not run", category=UserWarning)
        with _extractor(setup.model, collector, keep_graph=False) as fx, torch.no_grad():
            output = _forward(fx, collector, param.normalize(pixels))
            ref = {k: tuple(int(s) for s in t.shape[2:]) for k, t in collector.maps.items()}
            values = _evaluate(objectives, setup.samples, Activations(collector.maps, output, ref))
    return values.detach().to("cpu", torch.float32)


def _probe(
    model: nn.Module, items: Sequence[tuple[Objective | PendingRange, str]], size: tuple[int, int],
    device: torch.device, mean: Sequence[float], std: Sequence[float],
) -> tuple[list[Objective], list[str], dict[str, tuple[int, ...]]]:
    """One forward at the requested size: channel counts for ``*``/ranges, map sizes, target checks."""
    keys = set()
    needs_output = False
    for item, _ in items:
        if isinstance(item, PendingRange):
            keys.add(item.layer)
        else:
            keys |= item.layers
            needs_output |= item.needs_output
    collector = _Collector(frozenset(keys), stop=not needs_output)
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
    x = ((torch.full((1, 3, *size), 0.5) - m) / s).to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"layers .* did not run", category=UserWarning)
        with _extractor(model, collector, keep_graph=False) as fx, torch.no_grad():
            output = _forward(fx, collector, x)
    missing = sorted(keys - set(collector.maps))
    if missing:
        raise SynthesisError(
            f"layer {missing[0]!r} produced no output in a forward of a {size[0]}x{size[1]} image (it did not run, "
            "or its output is a tuple: name one tensor as 'layer[0]'); see fm.list_layers(model, x)"
        )
    if needs_output and output is None:
        raise SynthesisError("the model returned no tensor, so a class target cannot be read; use LAYER:CHANNEL")
    reference = {k: tuple(int(v) for v in t.shape[2:]) for k, t in collector.maps.items()}
    objectives: list[Objective] = []
    names: list[str] = []
    acts = Activations(collector.maps, output, reference)
    for item, text in items:
        expanded = expand(item, collector.infos) if isinstance(item, PendingRange) else [item]
        objectives.extend(expanded)
        if isinstance(item, PendingRange):
            names.extend(f"{o.layer}:{o.channel}" for o in expanded if isinstance(o, Channel))
        else:
            names.append(text)
        if isinstance(item, Objective):
            with torch.no_grad():  # every objective once, on one image: range checks fail here, early
                try:
                    item(acts)
                except SynthesisError as exc:
                    message = str(exc)
                    if text != repr(item):  # name the target as the user wrote it
                        message = f"target {text!r}: " + message.removeprefix(f"{item!r}: ")
                    raise SynthesisError(message) from None
    return objectives, names, reference



def synthesize(
    model: nn.Module, targets: TargetLike | Sequence[TargetLike], *, steps: int = 256,
    size: int | Sequence[int] = 128, param: str = "fft", decorrelate: bool = True,
    transforms: TransformsLike = "standard", lr: float = 0.05, seed: int = 0, batch: bool | int = True,
    samples: int = 1, preprocess: Any = None, progress: ProgressArg = True, device: str | torch.device | None = None,
    callback: Callable[[int, torch.Tensor], Any] | None = None, return_result: bool = False,
) -> Any:
    """Synthesize images that maximize channels (or any objective) of a model.

    Args:
        model: any ``nn.Module`` taking an image batch ``(N, 3, H, W)``.
        targets: one target or a list: ``"LAYER:CHANNEL"`` (the channel's
            mean activation), ``"LAYER:A-B"`` / ``"LAYER:*"`` (one image per
            channel of a range / of the whole layer), ``"class:INDEX"`` (an
            output of the model, e.g. a class logit), or an
            :class:`~featuremaps.synthesis.objectives.Objective` (``Neuron``,
            ``LayerL2``, ``Direction``, sums, ...).
        steps: optimization steps.
        size: image size, an int or ``(height, width)``.
        param: ``"fft"`` (Fourier coefficients with a 1/f spectrum) or
            ``"pixel"`` (see :mod:`featuremaps.synthesis.param`).
        decorrelate: optimize in the decorrelated ImageNet colour space.
        transforms: ``"standard"`` (pad, jitter, scale, rotate), ``"none"``,
            a :class:`~featuremaps.synthesis.transforms.Transforms` or a
            callable ``images -> images``.
        lr: Adam's learning rate.
        seed: random seed; the same seed gives the same images on the same
            device. The global random state is neither used nor changed.
        batch: ``True`` optimizes the images in batches: all in one batch
            on an accelerator, and batches of :data:`CPU_BATCH` images on a
            CPU, where large batches overflow the caches and run slower per
            image; ``False`` one target (with its samples) at a time; an int
            at most that many images per batch (``batch=len(targets)`` forces
            one batch). Every way gives the same images up to rounding.
        samples: images per target (different random starts); combine with
            :class:`~featuremaps.synthesis.objectives.Diversity` to make
            them differ more.
        preprocess: the model's preprocessing (from :func:`featuremaps.load_model`)
            or its :class:`~featuremaps.models.ModelCard`: its mean/std
            normalize the images inside the optimization. ``None``: the
            ImageNet mean/std.
        progress: ``True`` for a progress bar (on a terminal or in a notebook), ``False`` for none, or a
            callable ``progress(stage, done, total)``, called with the ``"synthesis"`` stage after every step of
            every batch (``total``: steps x batches).
        device: where to optimize; must be the model's device (default).
        callback: called as ``callback(step, values)`` after every step of
            every batch, ``values`` the objective value of each image in the
            batch; raising ``KeyboardInterrupt`` in it stops like Ctrl-C.
        return_result: return a :class:`SynthesisResult` (images, values per
            step, final activations) instead of the images.

    Returns:
        A PIL image for one target; a list of images for several targets,
        for a range or ``*``, or for ``samples > 1``; a list of lists
        (targets x samples) for several targets with ``samples > 1``; or the
        :class:`SynthesisResult` with ``return_result=True``. On Ctrl-C the
        current images are returned (``result.interrupted`` is set).

    Raises:
        SynthesisError: a malformed target, a channel or class out of range,
            a bad option.
        LayerNotFoundError: a target names no layer of the model (the
            message lists the closest names).

    Example:
        >>> import featuremaps as fm
        >>> from featuremaps.synthesis import synthesize
        >>> model, preprocess = fm.load_model()
        >>> img = synthesize(model, "_blocks.5._project_conv:17", preprocess=preprocess)  # doctest: +SKIP
        >>> imgs = synthesize(model, "_blocks.5._project_conv:*", preprocess=preprocess)  # doctest: +SKIP
    """
    start = time.perf_counter()
    _check_options(model, seed, lr, param)
    steps, samples = _check_int(steps, "steps", 0), _check_int(samples, "samples", 1)
    size2 = _size2(size)
    tf = get_transforms(transforms, size2)
    dev = _model_device(model, device)
    per_batch = _per_batch(batch, dev)
    if preprocess is None:
        preprocess = preprocess_for(model)  # a model from fm.load_model: its own normalization
    mean, std = _normalization(preprocess)
    items, single = parse_targets(targets)
    check_layers(model, items)
    objectives, names, reference = _probe(model, items, size2, dev, mean, std)
    setup = _Setup(
        model=model, samples=samples, steps=steps, size=size2, param=param,
        decorrelate=decorrelate, transforms=tf, lr=float(lr), seed=int(seed), device=dev, mean=mean, std=std,
        reference=reference, callback=callback,
    )
    with reporter(progress, unit="steps") as report:
        result = _optimize(setup, objectives, names, _chunks(len(objectives), samples, per_batch), report)
    result.seconds = time.perf_counter() - start
    if return_result:
        return result
    images = result.images
    if samples > 1:
        grouped = [images[i * samples:(i + 1) * samples] for i in range(len(objectives))]
        return grouped[0] if single else grouped
    return images[0] if single else images


def _check_options(model: Any, seed: Any, lr: Any, param: Any) -> None:
    if not isinstance(model, nn.Module):
        raise SynthesisError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SynthesisError(f"seed={seed!r} must be an int")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise SynthesisError(f"lr={lr!r} must be a positive number, e.g. 0.05")
    if not isinstance(param, str) or param.lower() not in (*PARAMS, "fourier"):
        raise SynthesisError(f"param={param!r} is not a parameterization; use one of {', '.join(PARAMS)}")


def _per_batch(batch: Any, device: torch.device) -> int | None:
    """Images per batch: ``None`` for all at once, 0 for one target at a time."""
    if isinstance(batch, bool):
        return (CPU_BATCH if device.type == "cpu" else None) if batch else 0
    return _check_int(batch, "batch", 1)


def _chunks(n_objectives: int, samples: int, per_batch: int | None) -> list[list[int]]:
    """The objectives in chunks of whole targets: all at once, one target at a time, or at most ``per_batch`` images."""
    if per_batch is None:
        return [list(range(n_objectives))]
    per = max(1, per_batch // samples) if per_batch else 1
    return [list(range(i, min(i + per, n_objectives))) for i in range(0, n_objectives, per)]


def _optimize(
    setup: _Setup, objectives: list[Objective], names: list[str], chunks: list[list[int]], report: Progress
) -> SynthesisResult:
    """Optimize the chunks one after the other; after Ctrl-C the remaining ones keep their initial images."""
    samples, steps = setup.samples, setup.steps
    history = torch.full((steps, len(objectives) * samples), float("nan"))
    pixels: list[torch.Tensor] = []
    activations: list[torch.Tensor] = []
    steps_done: list[int] = []
    interrupted = False
    total, done = steps * len(chunks), 0

    def advance(value: float) -> None:
        nonlocal done
        done += 1
        report("synthesis", done, total)

    for chunk in chunks:
        objs = [objectives[i] for i in chunk]
        lo, hi = chunk[0] * samples, (chunk[-1] + 1) * samples
        if interrupted:  # after Ctrl-C: the remaining targets keep their initial images
            param_obj, _ = _make(setup, len(objs))
            with torch.no_grad():
                pixels.append(param_obj().detach().to("cpu", torch.float32))
            activations.append(torch.full((hi - lo,), float("nan")))
            steps_done.extend([0] * (hi - lo))
            continue
        chunk_history = torch.full((steps, hi - lo), float("nan"))
        px, act, n_done, stopped = _run_chunk(setup, objs, advance, chunk_history)
        history[:, lo:hi] = chunk_history
        pixels.append(px)
        activations.append(act)
        steps_done.extend([n_done] * (hi - lo))
        interrupted = interrupted or stopped
    all_pixels = torch.cat(pixels)
    return SynthesisResult(
        images=to_images(all_pixels), targets=[name for name in names for _ in range(samples)],
        objectives=[o for o in objectives for _ in range(samples)], pixels=all_pixels, history=history,
        activations=torch.cat(activations), steps=steps, steps_done=torch.tensor(steps_done, dtype=torch.long),
        interrupted=interrupted, samples=samples,
    )
