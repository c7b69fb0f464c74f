"""Timing shared by the benchmark scripts: interleaved repetitions, medians, ratio tables; a synthetic dataset.

Interleaving (every variant once per round, rounds repeated) spreads the
machine's load changes over all variants alike; medians drop the outliers.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


class RandomImages(torch.utils.data.Dataset):
    """Normalized random 3x224x224 images, made from their index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(i))


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # time the work queued on a GPU, not just its launch


def measure_all(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds of every repetition of every variant, after one warm-up call each, interleaved."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t0)
    return times


def measure(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """The median seconds of each variant (see :func:`measure_all`)."""
    return {k: statistics.median(v) for k, v in measure_all(variants, reps).items()}


def report(title: str, med: dict[str, float], base: str, extra: dict[str, str], width: int = 28) -> None:
    """Print each variant's median time and its ratio to ``base``."""
    print(f"\n{title}")
    for name, t in med.items():
        print(f"  {name:<{width}} {t * 1e3:8.1f} ms   {t / med[base]:5.2f}x {base}   {extra.get(name, '')}")
