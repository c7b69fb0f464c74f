"""Helpers for tests/test_atlas.py: a seeded tiny model, a folder of images, a CLI entry for torchrun.

Run as a script it is the ``featuremaps`` command line with the ``atlas``
command registered, so ``torchrun --nproc_per_node=2 tests/atlas_helper.py
atlas DIR --model atlas_helper:tiny_net --weights random ...`` exercises the
real CLI under torch.distributed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_helper(args: list[str], processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run this file with ``args`` in a fresh process, or under ``torchrun`` with ``processes`` ranks (127.0.0.1)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, str(HERE / "atlas_helper.py")]
    if processes > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
        command = [*launcher, f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                   f"--master_port={free_port()}", str(HERE / "atlas_helper.py")]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=timeout)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x * 8) / 8

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class Dyadic(nn.Module):
    """Rounds the input to multiples of 1/8 (gradients pass through).

    With weights that are multiples of 1/4, every later sum is exact in
    float32, so each image's activations are the same bits whatever batch it
    is in: runs with different batchings (1 process vs 2) must agree exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RoundSTE.apply(x)  # type: ignore[no-any-return]


def tiny_net() -> nn.Module:
    """A small seeded CNN with exact arithmetic (same weights and bits in every process)."""
    gen = torch.Generator().manual_seed(1234)
    model = nn.Sequential(
        Dyadic(), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 8 if name.endswith("bias") else 4
            p.copy_(torch.randint(-4, 5, p.shape, generator=gen).float() / scale)
    return model


BUILT: list[str] = []  # names of the models made by the factories below, in this process


class _Counting(nn.Module):
    """Counts its forwards in ``calls`` (so a test can check that a command refused before running it)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)  # type: ignore[no-any-return]


def counting_net() -> nn.Module:
    """tiny_net behind a forward counter; records its construction in ``BUILT``."""
    BUILT.append("counting_net")
    return _Counting()


class _StuckOnRank1(nn.Module):
    """tiny_net, except that under torchrun rank 1 never returns from its first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.environ.get("RANK") == "1":
            import time

            time.sleep(3600)
        return self.net(x)  # type: ignore[no-any-return]


def stuck_net() -> nn.Module:
    """A model whose rank 1 hangs (for the distributed timeout test)."""
    return _StuckOnRank1()


def make_folder(root: Path, good: int = 8, size: int = 24) -> list[str]:
    """Write ``good`` deterministic PNGs (in two sub-folders) and one unreadable file; return the bad name."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for i in range(good):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(size, size + i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"img{i:02d}.png")
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return ["b/broken.png"]


def gloo_cuda(out: str) -> None:
    """Under torchrun: every rank on the one GPU, gloo between them, the atlas of a fixed tensor dataset."""
    import torch.distributed as dist

    from featuremaps.atlas import build_atlas

    dist.init_process_group(backend="gloo")
    try:
        x = torch.rand(11, 3, 20, 20, generator=torch.Generator().manual_seed(0))
        build_atlas(tiny_net().cuda(), x, layers=["1", "3"], k=3, batch_size=2, progress=False, out=out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if sys.argv[1:2] == ["gloo-cuda"]:
        gloo_cuda(sys.argv[2])
        return
    from featuremaps.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
