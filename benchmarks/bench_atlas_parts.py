"""Where the atlas pass's CPU time goes: the map kernel in the hooks, the top-k merge, the statistics.

Runs ``build_atlas`` on every convolution of the default EfficientNet-Lite0
(synthetic 224x224 images, batch 16, k=9, no receptive fields) and adds up
the CPU time (``time.thread_time``: the calling thread's own) spent

* in the hooks' map kernel (``featuremaps.atlas.fused.map_numbers``; the
  kernel's pool threads, if any, are not counted),
* in the worker thread's top-k merge (``AtlasReducer.merge``),
* in the worker thread's statistics update (``AtlasState.update``),

printed per 1,000 images (medians over repetitions, after one warm-up call).
It instruments the library's internals, so it is a profiling aid beside
``bench_atlas.py`` (which gives the ratios to plain inference), not a goal.

Usage::

    python benchmarks/bench_atlas_parts.py [--images 1024] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import featuremaps as fm  # noqa: E402
from featuremaps.atlas import build_atlas  # noqa: E402
from featuremaps.atlas import build as build_module  # noqa: E402
from featuremaps.atlas import reducer as reducer_module  # noqa: E402

from _timing import RandomImages  # noqa: E402

PARTS = ("kernel", "top-k merge", "statistics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    spent = dict.fromkeys(PARTS, 0.0)
    kernel, merge_batch = reducer_module.map_numbers, build_module._merge_batch

    def timed_kernel(*a: Any, **kw: Any) -> Any:
        t = time.thread_time()
        try:
            return kernel(*a, **kw)
        finally:
            spent["kernel"] += time.thread_time() - t

    def timed_merge(reducer: Any, taken: Any, state: Any, reduced: Any) -> None:
        t0 = time.thread_time()
        reducer.merge(taken)
        t1 = time.thread_time()
        state.update(reduced)
        spent["top-k merge"] += t1 - t0
        spent["statistics"] += time.thread_time() - t1

    reducer_module.map_numbers = timed_kernel
    build_module._merge_batch = timed_merge
    model, _ = fm.load_model()
    loader = torch.utils.data.DataLoader(RandomImages(args.images), batch_size=16)
    options = dict(layers=torch.nn.Conv2d, k=9, progress=False, checkpoint_every=None, receptive="none")
    build_atlas(model, loader, **options)  # warm-up: the kernel's compilation, lazy inits
    runs: dict[str, list[float]] = {part: [] for part in PARTS}
    for _ in range(args.reps):
        spent.update(dict.fromkeys(PARTS, 0.0))
        atlas = build_atlas(model, loader, **options)
        atlas.stats(atlas.layers()[0])  # (the statistics' queued batches are added here)
        for part in PARTS:
            runs[part].append(spent[part])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, {args.reps} reps")
    for part in PARTS:
        print(f"  {part:12s} {statistics.median(runs[part]) * 1000 / args.images * 1000:7.0f} ms CPU per 1,000 images")


if __name__ == "__main__":
    main()
