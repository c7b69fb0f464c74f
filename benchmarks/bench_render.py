"""Benchmark: channel grid of a real layer vs the naive tutorial approach.

Renders the 256-channel 56x56 output of ``torchvision.models.resnet50().layer1``
(random weights, random 224x224 input) and compares, in the same run:

* naive: one matplotlib subplot per channel, ``imshow(cmap="gray")``,
  ``savefig`` to PNG (what tutorials teach);
* naive to an array: the same figure drawn to an in-memory RGBA buffer;
* featuremaps in memory: ``channel_grid(maps)`` -> uint8 array, and -> PIL image;
* featuremaps to a PNG file: ``channel_grid(maps).save(path)`` (zlib level 1).

Repetitions are interleaved (one naive run, then the fast paths) so that
machine noise hits every method alike; medians are reported. Goals: the
in-memory grid at least 100x and the PNG file at least 20x faster than naive.

Run: ``python benchmarks/bench_render.py [--reps 5]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning OpenMP threads

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import featuremaps.render as fr
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import featuremaps.render as fr


def real_layer_output(seed: int = 0) -> tuple[torch.Tensor, str]:
    """(1, 256, 56, 56) activations of resnet50.layer1, or random data if torchvision is missing."""
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 224, 224)
    try:
        import torchvision
    except ImportError:
        print("torchvision is not installed: using random (1, 256, 56, 56) data instead of resnet50.layer1")
        return torch.relu(torch.randn(1, 256, 56, 56)), "random data"
    m = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        y = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
    return y, "resnet50.layer1 (random weights, random input)"


def naive_png(maps: torch.Tensor, path: Path) -> None:
    import matplotlib.pyplot as plt

    fm = maps[0].detach().cpu().numpy()
    plt.figure(figsize=(16, 16))
    for i in range(fm.shape[0]):
        plt.subplot(16, 16, i + 1)
        plt.imshow(fm[i], cmap="gray")
        plt.axis("off")
    plt.savefig(path)
    plt.close()


def naive_array(maps: torch.Tensor) -> np.ndarray:
    import matplotlib.pyplot as plt

    fm = maps[0].detach().cpu().numpy()
    fig = plt.figure(figsize=(16, 16))
    for i in range(fm.shape[0]):
        plt.subplot(16, 16, i + 1)
        plt.imshow(fm[i], cmap="gray")
        plt.axis("off")
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba()).copy()  # type: ignore[attr-defined]
    plt.close(fig)
    return out


def timed(fn: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions of the naive approach")
    parser.add_argument("--fast-reps", type=int, default=20, help="fast-path repetitions per naive repetition")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    maps, source = real_layer_output()
    print(f"maps: {tuple(maps.shape)} from {source}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"matplotlib {matplotlib.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # warm-up: imports, colormap tables, fonts
        naive_png(maps, d / "warm.png")
        fr.channel_grid(maps).save(d / "warm_fast.png")

        t_naive, t_naive_arr, t_grid, t_pil, t_png = [], [], [], [], []
        for _ in range(args.reps):
            t_naive.append(timed(naive_png, maps, d / "naive.png"))
            t_naive_arr.append(timed(naive_array, maps))
            for _ in range(args.fast_reps):
                t_grid.append(timed(lambda: fr.channel_grid(maps).array))
                t_pil.append(timed(lambda: fr.channel_grid(maps).to_pil()))
                t_png.append(timed(lambda: fr.channel_grid(maps).save(d / "fast.png")))

        grid = fr.channel_grid(maps)
        sizes = {}
        levels = {}
        for level in (0, 1, 6, 9):
            ts = [timed(lambda: grid.save(d / f"l{level}.png", compress_level=level)) for _ in range(5)]
            levels[level] = statistics.median(ts)
            sizes[level] = (d / f"l{level}.png").stat().st_size
        naive_size = (d / "naive.png").stat().st_size

    med = statistics.median
    naive, naive_arr = med(t_naive), med(t_naive_arr)
    rows = [
        ("naive: 256 subplots + imshow(gray) + savefig PNG", naive),
        ("naive: same figure drawn to an array", naive_arr),
        ("featuremaps: channel_grid -> uint8 array", med(t_grid)),
        ("featuremaps: channel_grid -> PIL image", med(t_pil)),
        ("featuremaps: channel_grid -> PNG file", med(t_png)),
    ]
    print(f"\nmedians over {args.reps} naive and {args.reps * args.fast_reps} fast repetitions (interleaved):")
    for name, t in rows:
        print(f"  {name:<52} {t * 1e3:10.1f} ms")
    print(f"\ngrid image {grid.width}x{grid.height} px; naive PNG {naive_size / 1e6:.2f} MB")
    r_mem, r_pil, r_png = naive / med(t_grid), naive / med(t_pil), naive / med(t_png)
    print(f"  in-memory array vs naive savefig: {r_mem:8.0f}x  (goal >= 100x: {'met' if r_mem >= 100 else 'MISSED'})")
    print(f"  PIL image vs naive savefig:       {r_pil:8.0f}x")
    print(f"  in-memory array vs naive array:   {naive_arr / med(t_grid):8.0f}x")
    print(f"  PNG file vs naive savefig:        {r_png:8.0f}x  (goal >= 20x: {'met' if r_png >= 20 else 'MISSED'})")
    print("\nPNG compress_level (encoding dominates writing a grid):")
    for level in levels:
        print(f"  level {level}: {levels[level] * 1e3:7.1f} ms, {sizes[level] / 1e6:5.2f} MB")


if __name__ == "__main__":
    main()
