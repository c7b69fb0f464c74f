"""CAM cost, measured side by side in one run and printed as ratios.

Grad-CAM, on resnet50 (random init, ``layer4[-1]``) and on the default
pretrained model (EfficientNet-Lite0, its last feature map), same batch:

* ``floor``       - one forward with a hook that keeps the layer output, then
                    ``torch.autograd.grad`` from the summed top-class logits to
                    that output only (no parameter gradients, no backward
                    through earlier layers); nothing else;
* ``featuremaps`` - ``GradCAM(model, layer=...)(x)``: capture engine, state
                    restoration, weights, ReLU, min-max, resize to the input;
* ``pgc``         - pytorch-grad-cam's ``GradCAM`` (a full ``loss.backward()``),
                    when installed;
* ``torchcam``    - torchcam's ``GradCAM`` (maps at feature resolution), when installed;
* ``channel relevance`` - ``fm.channel_relevance(model, x, layer=...)`` on the same
                    layer (per-channel gradient x activation, kept per position).

Score-CAM on the default model and the cat photo (1280 channels):

* ``masked forwards`` - the forwards Score-CAM cannot avoid: the very masked
                        inputs it ran, in the same batches, ready-made (with
                        denormals flushed, as Score-CAM does on the CPU);
* ``featuremaps``     - ``ScoreCAM(model)(x)`` (capture, masks, scores, map);
* ``pgc``             - pytorch-grad-cam's ``ScoreCAM`` with the same batch size.

Goals: Grad-CAM / floor <= 1.10; channel relevance / Grad-CAM <= 1.10; Grad-CAM at least 3x faster than pgc and
no slower than torchcam; Score-CAM / masked forwards <= 1.05. The maximum
difference between the maps is printed (pgc at the input size, torchcam at
feature resolution).

Usage::

    python benchmarks/bench_cam.py [--batch 16] [--reps 7] [--score-reps 3] [--score-batch 16] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import torch  # noqa: E402
from torch import nn  # noqa: E402

import featuremaps as fm  # noqa: E402
from featuremaps.attribution import GradCAM, ScoreCAM, minmax_per_image  # noqa: E402
from featuremaps.attribution.base import flush_denormals  # noqa: E402
from _timing import measure, report  # noqa: E402

warnings.filterwarnings("ignore")


def optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


def floor(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward + autograd.grad to the layer output: what any Grad-CAM must do."""
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(score, kept[0])
    return grad


def gradcam_section(title: str, model: nn.Module, layer_name: str, x: torch.Tensor, reps: int) -> None:
    model.eval()
    layer = model.get_submodule(layer_name)
    pgc = optional("pytorch_grad_cam")
    tcam = optional("torchcam.methods")
    ours = GradCAM(model, layer=layer_name)
    variants: dict[str, Callable[[], object]] = {
        "floor": lambda: floor(model, layer, x),
        "featuremaps": lambda: ours(x),
        "channel relevance": lambda: fm.channel_relevance(model, x, layer=layer_name),
    }
    if pgc is not None:
        def run_pgc() -> Any:
            with pgc.GradCAM(model, target_layers=[layer]) as cam:
                return cam(x, targets=None)
        variants["pgc"] = run_pgc
    if tcam is not None:
        def run_tcam() -> Any:
            with tcam.methods.GradCAM(model, target_layer=layer_name) as cam:
                out = model(x)
                return cam(class_idx=out.argmax(1).tolist(), scores=out)[0]
        variants["torchcam"] = run_tcam
    med = measure(variants, reps)
    extra: dict[str, str] = {}
    ref = ours(x)
    if pgc is not None:
        diff = float((torch.as_tensor(variants["pgc"]()) - ref.cpu()).abs().max())
        extra["pgc"] = f"max |diff| {diff:.1e}   featuremaps {med['pgc'] / med['featuremaps']:.2f}x faster"
    if tcam is not None:
        tc = torch.as_tensor(variants["torchcam"]()).detach()
        ours_feat = minmax_per_image(GradCAM(model, layer=layer_name).explain(x, size=tc.shape[1:]).heatmap)
        diff = float((minmax_per_image(tc) - ours_feat).abs().max())
        extra["torchcam"] = f"max |diff| {diff:.1e} (feature res.)   featuremaps {med['torchcam'] / med['featuremaps']:.2f}x faster"
    extra["featuremaps"] = "goal <= 1.10x floor"
    extra["channel relevance"] = f"{med['channel relevance'] / med['featuremaps']:.2f}x Grad-CAM (goal <= 1.10x)"
    report(title, med, "floor", extra, width=18)


def scorecam_section(model: nn.Module, x: torch.Tensor, batch: int, reps: int) -> None:
    model.eval()
    pgc = optional("pytorch_grad_cam")
    ours = ScoreCAM(model, batch_size=batch)
    # record the masked inputs Score-CAM feeds the model (the capture forward is the first call)
    inputs: list[torch.Tensor] = []
    forward = model.forward
    model.forward = lambda t: inputs.append(t.clone()) or forward(t)  # type: ignore[method-assign]
    try:
        ref = ours(x)
    finally:
        del model.forward
    masked = inputs[1:]
    layer_name = ours.layer_names[0]
    rows, skipped = ours.last_forwards, ours.last_skipped

    def masked_forwards() -> None:
        with torch.no_grad(), flush_denormals(x.device.type == "cpu"):
            for t in masked:
                model(t)

    variants: dict[str, Callable[[], object]] = {"masked forwards": masked_forwards, "featuremaps": lambda: ours(x)}
    if pgc is not None:
        def run_pgc() -> Any:
            with pgc.ScoreCAM(model, target_layers=[model.get_submodule(layer_name)]) as cam:
                cam.batch_size = batch
                return cam(x, targets=None)
        variants["pgc"] = run_pgc
    med = measure(variants, reps)
    channels = rows - (1 if skipped else 0) + skipped
    extra = {"featuremaps": f"goal <= 1.05x; {rows} rows run for {channels} channels ({skipped} all-zero masks "
                            "share one forward)"}
    if pgc is not None:
        diff = float((torch.as_tensor(variants["pgc"]()) - ref.cpu()).abs().max())
        extra["pgc"] = f"max |diff| {diff:.1e}   featuremaps {med['pgc'] / med['featuremaps']:.2f}x faster"
    report(f"Score-CAM, default model, layer {layer_name}, batch_size {batch}, 1 image", med, "masked forwards", extra, width=18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--score-reps", type=int, default=3)
    parser.add_argument("--score-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, {dev}, {args.threads} threads, batch {args.batch}")

    torchvision = optional("torchvision")
    if torchvision is not None:
        model = torchvision.models.resnet50().to(dev)
        x = torch.randn(args.batch, 3, 224, 224, device=dev)
        gradcam_section(f"Grad-CAM, resnet50 (random init), layer4[-1], batch {args.batch}", model, "layer4.2", x,
                        args.reps)
    model, preprocess = fm.load_model(device=dev)
    images = [fm.load_image(fm.sample_image(n)) for n in fm.sample_images()]
    x = preprocess([images[i % len(images)] for i in range(args.batch)]).to(dev)
    gradcam_section(f"Grad-CAM, default model, _act_head, batch {args.batch}", model, "_act_head", x, args.reps)
    if not args.skip_score:
        cat = preprocess(fm.load_image(fm.sample_image("cat"))).to(dev)
        scorecam_section(model, cat, args.score_batch, args.score_reps)


if __name__ == "__main__":
    main()
