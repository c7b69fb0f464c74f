"""Feature visualization of a whole layer: batched versus one channel at a time.

Synthesizes one image per channel of a mid-level layer of the default model
(``fm.load_model()``, EfficientNet-Lite0) at 128x128 with 256 steps, three ways:

* **batched** - ``batch=True``: all images in one batch on an accelerator,
  batches of ``CPU_BATCH`` (8) images on a CPU;
* **one batch** - ``batch=N``: all N images in one batch, also on a CPU;
* **one at a time** - ``batch=False``.

The batched run gives the images and their activations. On a small CPU the
other two can be timed for fewer steps (``--time-steps``) and on a subset of
channels (``--single`` for one at a time) and extrapolated linearly (the
cost per image and step is the same for every channel and step); the output
says what was measured and what extrapolated.

It prints the times and speed-ups, and the mean activation the images reach
(each image seen once, without transforms) against the activation of the
same channels on the shipped photos (``fm.sample_images()``): the dataset
mean over photos and positions, the best photo, and the synthesized
activation in units of the channel's spread on the photos.

Usage::

    python benchmarks/bench_synthesis.py [--layer _blocks.5._project_conv] [--steps 256] [--size 128]
                                         [--channels N] [--single 4] [--time-steps S] [--save grid.png]
                                         [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import featuremaps as fm  # noqa: E402
from featuremaps.synthesis import SynthesisResult, synthesize  # noqa: E402
from featuremaps.synthesis.optimize import CPU_BATCH  # noqa: E402


def dataset_stats(model: torch.nn.Module, preprocess: fm.Preprocess, layer: str) -> dict[str, torch.Tensor]:
    """Per-channel mean activation per photo, and the channel's spread over photos and positions."""
    x = preprocess([fm.load_image(fm.sample_image(name)) for name in fm.sample_images()])
    with torch.no_grad():
        t = fm.get_feature_maps(model, x, layers=layer)[layer].tensor.float().cpu()
    flat = t.transpose(0, 1).reshape(t.shape[1], -1)
    return {"per_photo": t.flatten(2).mean(2), "mean": flat.mean(1), "std": flat.std(1)}


def timed(model: torch.nn.Module, target: str, **opts: object) -> tuple[float, SynthesisResult]:
    start = time.perf_counter()
    result = synthesize(model, target, **opts)
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="_blocks.5._project_conv")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=None, help="only the first N channels (default: all)")
    ap.add_argument("--single", type=int, default=4, help="channels timed one at a time, then extrapolated")
    ap.add_argument("--time-steps", type=int, default=None,
                    help="steps timed for 'one batch' and 'one at a time' (default: --steps), then extrapolated")
    ap.add_argument("--save", default=None, help="write the batched images as one grid picture")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model, preprocess = fm.load_model(device=args.device)
    layer = args.layer
    stats = dataset_stats(model, preprocess, layer)
    n_all = int(stats["mean"].numel())
    n = min(n_all, args.channels or n_all)
    k = max(1, min(args.single, n))
    steps = args.steps
    tsteps = max(1, min(args.time_steps or steps, steps))
    print(f"model efficientnet_lite0, layer {layer}: {n_all} channels; {n} synthesized at {args.size}x{args.size}, "
          f"{steps} steps; torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, CPU_BATCH={CPU_BATCH}")
    opts = dict(size=args.size, preprocess=preprocess, progress=False, return_result=True)
    target = f"{layer}:0-{n - 1}"

    t_auto, batched = timed(model, target, batch=True, steps=steps, **opts)
    t_big, big = timed(model, target, batch=n, steps=tsteps, **opts)
    t_one, one = timed(model, f"{layer}:0-{k - 1}", batch=False, steps=tsteps, **opts)
    t_big *= steps / tsteps
    t_one *= (steps / tsteps) * (n / k)

    per = 1000.0 / (n * steps)
    ext = f", timed for {tsteps} steps and extrapolated to {steps}" if tsteps < steps else ""
    print(f"batched        {t_auto:8.1f} s  ({per * t_auto:.1f} ms per image-step; measured)")
    print(f"one batch      {t_big:8.1f} s  ({per * t_big:.1f} ms per image-step; {n} images in one batch{ext})")
    print(f"one at a time  {t_one:8.1f} s  ({per * t_one:.1f} ms per image-step; measured on {k} of {n} channels"
          f"{ext}, extrapolated to {n} channels)")
    print(f"speed-up       batched {t_one / t_auto:.2f}x, one batch {t_one / t_big:.2f}x  (vs one at a time)")
    if tsteps == steps:
        diff = float((batched.activations[:k] - one.activations).abs().max())
        print(f"               largest activation difference batched vs one at a time: {diff:.2e}")
    else:
        diff = float((big.history[:, :k] - one.history).abs().max())
        print(f"               largest objective difference one batch vs one at a time over {tsteps} steps: {diff:.2e}")

    act = batched.activations
    mean = stats["mean"][:n]
    best = stats["per_photo"][:, :n].max(0).values
    z = (act - mean) / stats["std"][:n].clamp_min(1e-6)
    print(f"activation     synthesized mean {float(act.mean()):.3f}  vs photos: dataset mean {float(mean.mean()):.3f}, "
          f"mean |dataset mean| {float(mean.abs().mean()):.3f}, best photo {float(best.mean()):.3f} "
          f"(averaged over channels)")
    pos = mean > 0.05 * float(stats["std"][:n].mean())
    ratio = (act[pos] / mean[pos]).median() if bool(pos.any()) else torch.tensor(float("nan"))
    print(f"relative       synthesized / dataset mean: {float(act.mean()) / float(mean.abs().mean()):.1f}x "
          f"(means over channels); median per-channel ratio {float(ratio):.1f}x over the {int(pos.sum())} "
          f"channels with a positive dataset mean")
    print(f"               synthesized beats the best photo in {int((act > best).sum())}/{n} channels; "
          f"mean z-score {float(z.mean()):.1f} (units of the channel's std over photos and positions)")
    if args.save:
        batched.grid(labels=False).save(args.save)
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
