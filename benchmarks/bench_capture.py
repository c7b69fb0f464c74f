"""Capture-engine overhead, measured side by side in one run and printed as ratios.

Variants (all at the same batch, interleaved, medians over repetitions):

* ``plain``      - the model's forward under ``torch.no_grad()``;
* ``bare hooks`` - forward hooks that only keep references to every conv
                   output (the floor: the maps have to be written to fresh
                   memory instead of reused buffers);
* ``featuremaps`` - ``get_feature_maps(model, x, layers=nn.Conv2d)``;
* ``fm mean`` / ``fm max`` - the same with a per-channel reduction;
* on resnet50 (when torchvision is installed) also torchvision's
  ``create_feature_extractor`` on the same conv layers.

Goals: featuremaps / bare hooks <= 1.10; fm mean / plain <= 1.10.

Usage::

    python benchmarks/bench_capture.py [--batch 8] [--reps 7]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import featuremaps as fm  # noqa: E402
from _timing import measure, report  # noqa: E402


def bare_hooks(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    kept: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: kept.__setitem__(name, o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return kept


def plain(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.reps} reps (medians)")

    model, _ = fm.load_model()
    x = torch.randn(args.batch, 3, 224, 224)
    kept = bare_hooks(model, x)
    floor_bytes = sum(t.numel() * t.element_size() for t in kept.values())
    maps = fm.get_feature_maps(model, x, layers=nn.Conv2d)
    mean_maps = fm.get_feature_maps(model, x, layers=nn.Conv2d, reduce="mean")
    assert list(maps) == list(kept), "featuremaps and bare hooks must keep the same layers"
    med = measure(
        {
            "plain forward": lambda: plain(model, x),
            "bare hooks (floor)": lambda: bare_hooks(model, x),
            "featuremaps all convs": lambda: fm.get_feature_maps(model, x, layers=nn.Conv2d),
            "featuremaps reduce=mean": lambda: fm.get_feature_maps(model, x, layers=nn.Conv2d, reduce="mean"),
            "featuremaps reduce=max": lambda: fm.get_feature_maps(model, x, layers=nn.Conv2d, reduce="max"),
        },
        args.reps,
    )
    report(
        f"efficientnet_lite0 (embedded default), {len(maps)} conv outputs",
        med,
        "plain forward",
        {
            "bare hooks (floor)": f"keeps {floor_bytes / 1e6:.1f} MB",
            "featuremaps all convs": f"keeps {maps.nbytes / 1e6:.1f} MB",
            "featuremaps reduce=mean": f"keeps {mean_maps.nbytes / 1e3:.1f} kB",
        },
    )
    print(
        f"  => featuremaps / bare hooks = {med['featuremaps all convs'] / med['bare hooks (floor)']:.3f} (goal <= 1.10)"
    )
    print(
        f"  => reduce=mean / plain      = {med['featuremaps reduce=mean'] / med['plain forward']:.3f} (goal <= 1.10)"
    )
    print(
        f"  => reduce=max / plain       = {med['featuremaps reduce=max'] / med['plain forward']:.3f} (goal <= 1.10)"
    )

    try:
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor
    except ImportError:
        print("\ntorchvision not installed: resnet50 comparison skipped")
        return
    r50 = torchvision.models.resnet50().eval()
    conv_names = [n for n, m in r50.named_modules() if isinstance(m, nn.Conv2d)]
    tvfx = create_feature_extractor(r50, return_nodes=conv_names)

    def run_tvfx() -> None:
        with torch.no_grad():
            tvfx(x)

    med = measure(
        {
            "plain forward": lambda: plain(r50, x),
            "bare hooks (floor)": lambda: bare_hooks(r50, x),
            "torchvision feature_extr.": run_tvfx,
            "featuremaps all convs": lambda: fm.get_feature_maps(r50, x, layers=nn.Conv2d),
            "featuremaps reduce=mean": lambda: fm.get_feature_maps(r50, x, layers=nn.Conv2d, reduce="mean"),
        },
        args.reps,
    )
    r50_maps = fm.get_feature_maps(r50, x, layers=nn.Conv2d)
    report(f"resnet50 (random weights), {len(conv_names)} conv outputs", med, "plain forward",
           {"featuremaps all convs": f"keeps {r50_maps.nbytes / 1e6:.1f} MB"})
    print(
        "  => featuremaps / torchvision = "
        f"{med['featuremaps all convs'] / med['torchvision feature_extr.']:.3f}; "
        f"featuremaps / bare hooks = {med['featuremaps all convs'] / med['bare hooks (floor)']:.3f}"
    )


if __name__ == "__main__":
    main()
