"""Where the atlas merges each batch on the CPU: beside the next forward (the default) or right after it.

With the C library, ``build_atlas`` merges each batch (top-k and statistics)
in a worker thread, on one thread, while the next batch's forward runs;
``FEATUREMAPS_FUSED=0`` and machines without a C compiler merge right after
the forward. This script runs the same pass both ways (every convolution of
the default EfficientNet-Lite0, synthetic 224x224 images, batch 16, k=9, no
receptive fields), alternating the two and flipping their order every
repetition, and prints the median and quartiles of the ratio of their
times (above 1: the default is faster) and how many repetitions the default
won. Comparing the two directly, rather than each with plain inference,
halves the runs that the machine's changing load can disturb.

The result depends on OpenMP's wait policy: with ``OMP_WAIT_POLICY=PASSIVE``
(the default here, as in the other benchmarks) PyTorch's threads sleep
between operations and leave the worker idle moments of the cores; without
it they spin there for a while (``OMP_WAIT_POLICY=default`` here: the
variable unset, OpenMP's own behaviour, as most users run). Run it both ways::

    python benchmarks/bench_atlas_merge.py [--images 128] [--reps 30]
    OMP_WAIT_POLICY=default python benchmarks/bench_atlas_merge.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

if os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE") == "default":
    del os.environ["OMP_WAIT_POLICY"]  # (read when PyTorch's OpenMP runtime loads, below)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import featuremaps as fm  # noqa: E402
from featuremaps.atlas import build as build_module  # noqa: E402
from featuremaps.atlas import build_atlas  # noqa: E402

from _timing import RandomImages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    model, _ = fm.load_model()
    loader = torch.utils.data.DataLoader(RandomImages(args.images), batch_size=16)
    default = build_module._merged_beside

    def run(beside: bool) -> float:
        """Seconds of one pass, merged beside the next forward (the default) or right after each forward."""
        build_module._merged_beside = default if beside else (lambda device: device.type != "cpu")
        try:
            t = time.perf_counter()
            build_atlas(model, loader, layers=nn.Conv2d, k=9, progress=False, checkpoint_every=None,
                        receptive="none")
            return time.perf_counter() - t
        finally:
            build_module._merged_beside = default

    if not default(torch.device("cpu")):
        raise SystemExit("bench_atlas_merge: the atlas's C library is not available here (no C compiler, or "
                         "FEATUREMAPS_FUSED=0), so both ways merge after the forward; install gcc or unset it")
    run(True), run(False)  # warm-up: the kernel's loading, lazy inits
    ratios = []
    for i in range(args.reps):
        order = (True, False) if i % 2 else (False, True)
        seconds = {beside: run(beside) for beside in order}
        ratios.append(seconds[False] / seconds[True])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, {args.images} images, {args.reps} reps")
    print(f"  time merged after the forward / time merged beside the next forward: median "
          f"{statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f}); beside faster in "
          f"{sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    main()
