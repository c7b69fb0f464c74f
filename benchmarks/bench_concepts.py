"""Concept discovery throughput, measured side by side with plain inference and printed as ratios.

Throughput (images/s, medians over interleaved repetitions, same model, same
DataLoader, same batch size):

* ``plain``                 - ``model(x)`` under ``torch.no_grad()`` for every batch;
* ``concept pass``          - the streaming pass of :func:`featuremaps.discover_concepts`
                              alone (capture + position sample of one layer);
* ``discover (no examples)``- the whole call without the second pass: the pass
                              and the NMF of the sample;
* ``discover (with top-k)`` - the whole call: pass, NMF, and the second pass
                              for each concept's top examples.

Goal: concept pass / plain >= 0.8 on the default model (efficientnet_lite0).
The dataset is synthetic: random 224x224 images made from their index.

Usage::

    python benchmarks/bench_concepts.py [--images 128] [--batch 16] [--reps 3] [--layer _act_head] [--n 10]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import featuremaps as fm  # noqa: E402
from featuremaps._progress import silent  # noqa: E402
from featuremaps.datapass import make_source  # noqa: E402
from featuremaps.datapass.checkpoint import CheckpointFiles  # noqa: E402
from featuremaps.concepts.build import _run_pass  # noqa: E402
from _timing import RandomImages, measure_all  # noqa: E402


def plain(model: nn.Module, loader: torch.utils.data.DataLoader) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        for x in loader:
            model(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()


def concept_pass(model: nn.Module, loader: torch.utils.data.DataLoader, layer: str) -> None:
    device = next(model.parameters()).device
    src = make_source(loader, None, None, 0)
    no_checkpoints = CheckpointFiles(None, None, None)  # the pass alone, as discover_concepts runs it without out=
    _run_pass(model, layer, src, None, device, silent, None, no_checkpoints, resume=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layer", default="_act_head")
    parser.add_argument("--n", type=int, default=10, help="concepts")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model, _ = fm.load_model()
    model.to(args.device)
    loader = torch.utils.data.DataLoader(RandomImages(args.images), batch_size=args.batch)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, efficientnet_lite0, "
          f"{args.images} images of 3x224x224, batch {args.batch}, layer {args.layer}, {args.n} concepts, "
          f"{args.reps} reps (medians)")
    variants = {
        "plain": lambda: plain(model, loader),
        "concept pass": lambda: concept_pass(model, loader, args.layer),
        "discover (no examples)": lambda: fm.discover_concepts(model, loader, args.layer, args.n, examples=False,
                                                              progress=False),
        "discover (with top-k)": lambda: fm.discover_concepts(model, loader, args.layer, args.n, progress=False,
                                                             receptive="none"),
    }
    times = measure_all(variants, args.reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = {k: statistics.median(p / t for p, t in zip(times["plain"], v)) for k, v in times.items()}
    print("\nthroughput (median)              images/s   x plain: median, median of paired reps")
    for name in times:
        print(f"  {name:<30} {args.images / med[name]:8.1f}   {med['plain'] / med[name]:5.2f}  {paired[name]:5.2f}")
    print("\ngoal: concept pass >= 0.80x plain")


if __name__ == "__main__":
    main()
