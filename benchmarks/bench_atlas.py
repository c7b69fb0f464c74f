"""Atlas throughput and memory, measured side by side and printed as ratios.

Throughput (images/s; same model, same DataLoader, same batch size):

* ``plain``            - ``model(x)`` under ``torch.no_grad()`` for every batch;
* ``atlas blocks``     - the atlas pass (top-k + statistics) on the 16 block
                         outputs of the default EfficientNet-Lite0;
* ``atlas all convs``  - the same on every convolution (49 layers);

each atlas variant once without the fixed per-run cost (``receptive="none"``:
the pass itself) and once as a whole ``build_atlas`` call (with the receptive
fields: measured once per architecture, then cached). Goals: atlas pass /
plain >= 0.85, whole call >= 0.80. Every variant runs once first (warm-up:
lazy inits, the C kernel's compilation or loading); then each repetition
runs plain inference and a variant back to back, and the ratios printed are
medians over repetitions of those pairs' ratios, of wall time and of CPU
time (a shared machine's load changes less between two neighbouring runs).

The atlas variants use the C kernel (``featuremaps.atlas.fused``: one read
of each map for its maximum, moments and positives, and the first argmax of
the maps that may enter a top-k). The
``before:`` variants run the same calls with ``FEATUREMAPS_FUSED=0``
(PyTorch's separate reductions, the argmax looked up for the maps that may
enter a top-k), in the same run.

Memory: peak RSS of a fresh process while it runs plain inference or the
atlas pass over 1x and 10x the images (same k), above its RSS before the
pass (Linux VmHWM, reset just before): the atlas must stay flat. It is also
measured with glibc's mmap threshold fixed, which separates the memory the
pass holds from the heap growth of the allocator itself.

The dataset is synthetic: random 224x224 images made on the fly from their
index, so the dataset itself holds nothing (with ``--device cuda``: made once
and kept on the GPU, which would otherwise wait for the CPU to make them).

Usage::

    python benchmarks/bench_atlas.py [--images 256] [--batch 16] [--reps 3] [--memory-images 64] [--device cuda]

The top-k churn of the first batches (entries enter most channels' young
top-k, so every channel is merged) fades as the dataset grows (then a batch
is merged into the few channels where something can enter); 256 images show
the steady state better than a few batches do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import featuremaps as fm  # noqa: E402
from featuremaps.atlas import build_atlas  # noqa: E402
from featuremaps.layers import LayerSelector  # noqa: E402
from _timing import RandomImages  # noqa: E402

BLOCKS = r"re:^_blocks\.\d+$"


class PremadeImages(torch.utils.data.Dataset):
    """The same images, made once and kept on the device (a GPU would otherwise wait for the CPU to make them)."""

    def __init__(self, n: int, device: str) -> None:
        self.x = torch.stack([RandomImages(n)[i] for i in range(n)]).to(device)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def plain(model: nn.Module, loader: torch.utils.data.DataLoader) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        for x in loader:
            model(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()


def atlas(
    model: nn.Module, loader: torch.utils.data.DataLoader, layers: LayerSelector, receptive: str, fast: bool = True
) -> None:
    """One build_atlas with the C kernel (``fast=False``: PyTorch's reductions, ``FEATUREMAPS_FUSED=0``)."""
    os.environ["FEATUREMAPS_FUSED"] = "1" if fast else "0"
    try:
        build_atlas(model, loader, layers=layers, k=9, progress=False, checkpoint_every=None, receptive=receptive)
    finally:
        os.environ.pop("FEATUREMAPS_FUSED", None)


def measure_paired(
    variants: dict[str, Callable[[], object]], reps: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """Per variant and repetition, ``(its seconds, plain's seconds)`` run just before it: wall and CPU time.

    Every variant runs once first (warm-up: lazy inits, the fused kernel's
    compilation); then each repetition runs, for every variant in turn, plain
    inference and the variant back to back, so a ratio compares two runs made
    under the same machine load.
    """
    for fn in variants.values():
        fn()
    wall: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            if name == "plain":
                continue
            pair = []
            for f in (variants["plain"], fn):
                t0, c0 = time.perf_counter(), time.process_time()
                f()
                pair.append((time.perf_counter() - t0, time.process_time() - c0))
            wall[name].append((pair[1][0], pair[0][0]))
            cpu[name].append((pair[1][1], pair[0][1]))
    return wall, cpu


def _peak_rss_mb() -> float:
    """The process's peak resident memory since the last reset (Linux VmHWM), in MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_child(mode: str, n: int, batch: int) -> None:
    """Run one pass in this (fresh) process and print its peak RSS above the start, as JSON."""
    model, _ = fm.load_model()
    loader = torch.utils.data.DataLoader(RandomImages(n), batch_size=batch)
    plain(model, torch.utils.data.DataLoader(RandomImages(batch), batch_size=batch))  # warm-up: lazy inits
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:  # reset VmHWM to the current RSS
        f.write("5")
    before = _rss_mb()
    t0 = time.perf_counter()
    if mode == "plain":
        plain(model, loader)
    else:
        atlas(model, loader, nn.Conv2d, "none")
    peak = _peak_rss_mb()
    print(json.dumps({"peak_mb": peak, "before_mb": before, "seconds": time.perf_counter() - t0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--memory-images", type=int, default=64, help="images for the 1x memory run (10x too)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the peak-memory runs")
    parser.add_argument("--skip-before", action="store_true",
                        help="leave out the 'before' variants (PyTorch's reductions: FEATUREMAPS_FUSED=0)")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.batch)
        return

    model, _ = fm.load_model()
    model.to(args.device)
    data = RandomImages(args.images) if args.device == "cpu" else PremadeImages(args.images, args.device)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch)
    n_convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, efficientnet_lite0, "
          f"{args.images} images of 3x224x224, batch {args.batch}, k=9, {args.reps} reps (medians)")
    variants = {
        "plain": lambda: plain(model, loader),
        "atlas blocks (pass)": lambda: atlas(model, loader, BLOCKS, "none"),
        f"atlas {n_convs} convs (pass)": lambda: atlas(model, loader, nn.Conv2d, "none"),
        "atlas blocks (build_atlas)": lambda: atlas(model, loader, BLOCKS, "auto"),
        f"atlas {n_convs} convs (build_atlas)": lambda: atlas(model, loader, nn.Conv2d, "auto"),
    }
    if not args.skip_before:
        variants.update({
            "before: atlas blocks (pass)": lambda: atlas(model, loader, BLOCKS, "none", fast=False),
            f"before: atlas {n_convs} convs (pass)": lambda: atlas(model, loader, nn.Conv2d, "none", fast=False),
            "before: atlas blocks (build_atlas)": lambda: atlas(model, loader, BLOCKS, "auto", fast=False),
            f"before: atlas {n_convs} convs (build_atlas)": lambda: atlas(model, loader, nn.Conv2d, "auto", fast=False),
        })
    wall, cpu = measure_paired(variants, args.reps)
    print("\nthroughput, x plain: the median over repetitions of each run's ratio to a plain pass run just before it")
    print("(quartiles: of the wall-time ratios, the spread from repetition to repetition)")
    print(f"  {'':<44} {'images/s':>9}   {'x plain (wall)':>14}   {'quartiles':>11}   {'x plain (CPU time)':>18}")
    for name in variants:
        if name == "plain":
            continue
        seconds = statistics.median(t for t, _ in wall[name])
        ratios = [p / t for t, p in wall[name]]
        low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        print(f"  {name:<44} {args.images / seconds:9.1f}   {statistics.median(ratios):14.2f}   "
              f"{f'{low:.2f}-{high:.2f}':>11}   {statistics.median(p / t for t, p in cpu[name]):18.2f}")
    plain_s = statistics.median(p for name in wall for _, p in wall[name])
    print(f"  {'plain':<44} {args.images / plain_s:9.1f}")

    if args.skip_memory:
        return
    print("\npeak memory above the process's state before the pass (fresh process each; atlas on every conv, k=9)")
    # glibc raises its mmap threshold as large blocks are freed, so a long run keeps more freed memory
    # in its heap: the peak creeps up and then levels off. With the threshold fixed ("fixed malloc")
    # that effect is gone and what remains is the memory the pass itself holds.
    rows = {}
    runs = [("plain", {}), ("atlas", {}), ("atlas, fixed malloc", {"MALLOC_MMAP_THRESHOLD_": "131072"})]
    for label, extra in runs:
        for factor in (1, 10):
            n = args.memory_images * factor
            out = subprocess.run(
                [sys.executable, __file__, "--batch", str(args.batch), "--memory-child", label.split(",")[0], str(n)],
                capture_output=True, text=True, check=True, env={**os.environ, **extra},
            )
            r = rows[(label, factor)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {label:<19} {n:5d} images: peak {r['peak_mb'] - r['before_mb']:7.1f} MB above "
                  f"{r['before_mb']:.0f} MB  ({n / r['seconds']:.1f} images/s)")
    for label, _ in runs:
        growth = (rows[(label, 10)]["peak_mb"] - rows[(label, 10)]["before_mb"]) - (
            rows[(label, 1)]["peak_mb"] - rows[(label, 1)]["before_mb"])
        print(f"  {label}: 10x images - 1x images = {growth:+.1f} MB")


if __name__ == "__main__":
    main()
