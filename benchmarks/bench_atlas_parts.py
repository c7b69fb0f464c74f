"""Where the atlas pass's time goes: the map kernel in the hooks, the top-k merge, the statistics.

Runs ``build_atlas`` on every convolution of the default EfficientNet-Lite0
(synthetic 224x224 images, batch 16, k=9, no receptive fields), with each
batch merged right after its forward (by default the merge runs in a worker
thread beside the next forward, where its time is hidden in part:
``bench_atlas_merge.py`` measures that), and adds up the wall time spent
(all three run in the calling thread, on the CPU, one after the other)

* in the hooks' map kernel (``featuremaps.atlas.fused.map_numbers``, on
  PyTorch's threads),
* in the top-k merge after each forward (``AtlasReducer.merge``),
* in the statistics update after each forward (``AtlasState.update``),

printed per 1,000 images and as a share of plain inference's time on the
same images, and the time per call spent making the atlas from the state at
the end (``_to_atlas``: the statistics read from their exact sums), which
does not grow with the images (medians over repetitions, after one warm-up call; each
repetition runs plain inference, then the atlas).
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

PARTS = ("kernel", "top-k merge", "statistics")  # (per image; "finishing" is per call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    spent = dict.fromkeys((*PARTS, "finishing"), 0.0)

    def timed(fn: Any, part: str) -> Any:
        """``fn``, adding the wall time of each call to ``spent[part]``."""

        def call(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[part] += time.perf_counter() - t

        return call

    def timed_merge(reducer: Any, taken: Any, state: Any, reduced: Any) -> None:
        t0 = time.perf_counter()
        reducer.merge(taken)
        t1 = time.perf_counter()
        state.update(reduced)
        spent["top-k merge"] += t1 - t0
        spent["statistics"] += time.perf_counter() - t1

    reducer_module.map_numbers = timed(reducer_module.map_numbers, "kernel")
    build_module._merge_batch = timed_merge
    build_module._to_atlas = timed(build_module._to_atlas, "finishing")
    build_module._merged_beside = lambda device: False  # each part in this thread, one after the other
    model, _ = fm.load_model()
    loader = torch.utils.data.DataLoader(RandomImages(args.images), batch_size=16)
    options = dict(layers=torch.nn.Conv2d, k=9, progress=False, checkpoint_every=None, receptive="none")
    build_atlas(model, loader, **options)  # warm-up: the kernel's compilation, lazy inits
    runs: dict[str, list[float]] = {part: [] for part in (*PARTS, "finishing", "plain")}
    for _ in range(args.reps):
        t = time.perf_counter()
        with torch.no_grad():
            for x in loader:
                model(x)
        runs["plain"].append(time.perf_counter() - t)
        spent.update(dict.fromkeys((*PARTS, "finishing"), 0.0))
        build_atlas(model, loader, **options)
        for part in (*PARTS, "finishing"):
            runs[part].append(spent[part])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, {args.reps} reps")
    plain = statistics.median(runs["plain"])
    print(f"  {'plain inference':16s} {plain * 1e6 / args.images:7.0f} ms per 1,000 images")
    for part in PARTS:
        t = statistics.median(runs[part])
        print(f"  {part:16s} {t * 1e6 / args.images:7.0f} ms per 1,000 images ({t / plain:6.1%} of plain inference)")
    print(f"  {'finishing':16s} {statistics.median(runs['finishing']) * 1e3:7.0f} ms per call (the atlas made from the "
          "state: fixed, whatever the images)")


if __name__ == "__main__":
    main()
