"""The atlas merges each batch in a worker thread while the next batch's forward runs.

The next forward's hooks then read top-k that do not hold the previous batch
yet; the atlas must still equal an answer computed directly from the whole
maps, and a merge that fails must surface and never be checkpointed. (On an
accelerator, and on the CPU where the C library merges; these tests make
every path take the worker's, PyTorch's merges included.)
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from featuremaps.atlas import build as build_module
from featuremaps.atlas import build_atlas
from featuremaps.atlas import reducer as reducer_module
from featuremaps.atlas import state as state_module


@pytest.fixture(autouse=True)
def merged_beside(monkeypatch):
    """The worker's path, as on an accelerator."""
    monkeypatch.setattr(build_module, "_merged_beside", lambda device: True)


class _Signal(nn.Module):
    """Sets ``event`` in every forward but the first (after the captured layer has run)."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            self.event.set()
        return x


def _direct_top(maps: torch.Tensor, k: int) -> list[list[tuple[int, float, tuple[int, int]]]]:
    """Per channel, the top-k by (spatial max descending, index ascending), with the first argmax's (y, x)."""
    n, c, h, w = maps.shape
    flat = maps.reshape(n, c, h * w)
    best, where = flat.max(2)
    out = []
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-float(best[i, ch]), i))[:k]
        out.append([(i, float(best[i, ch]), divmod(int(where[i, ch]), w)) for i in order])
    return out


def test_a_batch_merged_beside_the_next_forward_gives_the_direct_answer(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, bias=False)
    with torch.no_grad():  # small integers: every sum is exact, whatever the batch or kernel (and ties abound)
        conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape, generator=gen).float())
    x = torch.randint(0, 4, (11, 3, 8, 8), generator=gen).float()
    x[7] = x[2]  # equal scores: the lower index must win
    signal = _Signal()
    real_merge, overlapped = reducer_module.AtlasReducer.merge, []

    def waiting_merge(self, taken):  # each merge but the last waits until the next forward has run the layer
        if len(overlapped) < 5:
            overlapped.append(signal.event.wait(timeout=60))
            signal.event.clear()
        else:
            overlapped.append(None)
        return real_merge(self, taken)

    monkeypatch.setattr(reducer_module.AtlasReducer, "merge", waiting_merge)
    atlas = build_atlas(nn.Sequential(conv, signal), x, layers="0", k=3, batch_size=2, progress=False,
                        receptive="none")
    # every merge but the last (no forward follows it) ran while the next forward ran the layer
    assert overlapped == [True] * 5 + [None] and signal.calls == 6
    with torch.no_grad():
        expected = _direct_top(conv(x), 3)
    for ch in range(5):
        got = [(e.index, e.score, e.position) for e in atlas.top_examples("0", ch)]
        assert got == expected[ch]


def test_a_merge_that_fails_raises_and_is_never_checkpointed(tmp_path, monkeypatch):
    conv = nn.Conv2d(3, 4, 3)
    x = torch.rand(12, 3, 9, 9, generator=torch.Generator().manual_seed(4))
    opts = {"layers": "0", "k": 2, "batch_size": 2, "checkpoint_every": 2, "progress": False}
    build_atlas(nn.Sequential(conv), x, out=tmp_path / "full", **opts)
    real_update, calls = state_module.AtlasState.update, []

    def failing_update(self, reduced):  # the third batch's merge: half done, then an error
        calls.append(1)
        if len(calls) == 3:
            self.stats.count += 1
            raise RuntimeError("merge failed")
        return real_update(self, reduced)

    monkeypatch.setattr(state_module.AtlasState, "update", failing_update)
    with pytest.raises(RuntimeError, match="merge failed"):
        build_atlas(nn.Sequential(conv), x, out=tmp_path / "resumed", **opts)
    monkeypatch.setattr(state_module.AtlasState, "update", real_update)
    build_atlas(nn.Sequential(conv), x, out=tmp_path / "resumed", **opts)
    full = {p.relative_to(tmp_path / "full").as_posix(): p.read_bytes()
            for p in sorted((tmp_path / "full").rglob("*")) if p.is_file()}
    resumed = {p.relative_to(tmp_path / "resumed").as_posix(): p.read_bytes()
               for p in sorted((tmp_path / "resumed").rglob("*")) if p.is_file()}
    assert resumed == full


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_ctrl_c_while_waiting_for_a_merge_checkpoints_the_merged_batches(tmp_path, monkeypatch):
    """Ctrl-C while the pass waits for the worker: the merge finishes and the checkpoint holds it."""
    from concurrent.futures import ThreadPoolExecutor

    conv = nn.Conv2d(3, 4, 3)
    x = torch.rand(10, 3, 9, 9, generator=torch.Generator().manual_seed(5))
    opts = {"layers": "0", "k": 2, "batch_size": 2, "checkpoint_every": 100, "progress": False, "receptive": "none"}
    build_atlas(nn.Sequential(conv), x, out=tmp_path / "full", **opts)
    release = threading.Event()
    real_merge, merges = reducer_module.AtlasReducer.merge, []

    def held_merge(self, taken):  # the third batch's merge waits until Ctrl-C has come
        merges.append(1)
        if len(merges) == 3:
            release.wait(timeout=60)
        return real_merge(self, taken)

    class Interrupted:
        """The worker's future; the first wait for the third batch's merge is cut by Ctrl-C."""

        def __init__(self, future, cut):
            self.future, self.cut = future, cut

        def result(self):
            if self.cut:
                self.cut = False
                release.set()
                raise KeyboardInterrupt
            return self.future.result()

        def done(self):
            return self.future.done()

        def exception(self):
            return self.future.exception()

    class Executor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn, /, *args, **kwargs):
            Executor.submitted += 1
            return Interrupted(super().submit(fn, *args, **kwargs), Executor.submitted == 3)

    monkeypatch.setattr(reducer_module.AtlasReducer, "merge", held_merge)
    monkeypatch.setattr(build_module, "ThreadPoolExecutor", Executor)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(nn.Sequential(conv), x, out=tmp_path / "resumed", **opts)
    assert release.is_set()
    monkeypatch.undo()
    again = _Counting()
    build_atlas(nn.Sequential(conv, again), x, out=tmp_path / "resumed", **opts)
    # batches 1-3 are in the checkpoint (Ctrl-C came after the 4th's forward, waiting for the 3rd's merge)
    assert again.calls == 2
    full = {p.relative_to(tmp_path / "full").as_posix(): p.read_bytes()
            for p in sorted((tmp_path / "full").rglob("*")) if p.is_file()}
    resumed = {p.relative_to(tmp_path / "resumed").as_posix(): p.read_bytes()
               for p in sorted((tmp_path / "resumed").rglob("*")) if p.is_file()}
    assert resumed == full
