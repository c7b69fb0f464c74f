"""The atlas's map reduction (the C kernel: one read of each map) against PyTorch's reductions and direct answers.

Every answer is computed independently: maxima, counts and argmax positions by
PyTorch on the whole map, means and variances in float64 from the values.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from featuremaps.atlas import build_atlas, fused, native
from featuremaps.atlas import reducer as reducer_module
from featuremaps.atlas.stats import per_image_moments


def awkward_maps(b: int, c: int, n: int, seed: int) -> torch.Tensor:
    """Random maps with the hard cases: NaN, +inf, -inf everywhere, all zeros, ties, a large mean, a constant."""
    x = torch.randn(b, c, n, generator=torch.Generator().manual_seed(seed))
    x[0, 0, n // 3] = float("nan")
    x[0, 0, n // 2] = float("nan")
    x[0, 1, :] = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed + 1)).float()  # ties
    x[0, 2, :] = 0.0
    x[1, 0, :] = 1e4 + torch.rand(n, generator=torch.Generator().manual_seed(seed + 2)) * 1e-2  # E[x^2] cancels
    x[1, 1, n - 1] = float("inf")
    x[1, 2, :] = -float("inf")
    x[2, 0, :] = 2.5  # zero variance
    x[2, 1, 0] = 7.0  # the maximum in the first position ...
    x[2, 1, n - 1] = 7.0  # ... and again in the last
    # large values where the kernel takes its shift from (8 spread positions): the shift is far from the mean
    x[2, 2, [(2 * i + 1) * n // 16 for i in range(8)]] = 1000.0
    return x


SHAPES = [(3, 4, 12544), (3, 3, 49), (3, 5, 196), (3, 3, 1000), (3, 3, 9), (3, 3, 1)]
# sizes around the kernel's 16-value steps and blocks, and past the size at which it takes several threads
KERNEL_SHAPES = SHAPES + [(3, 3, 15), (3, 3, 16), (3, 3, 17), (3, 3, 40), (3, 3, 136), (3, 3, 263), (3, 3, 513),
                          (3, 3, 1031), (4, 3, 2**16 + 3)]


@pytest.mark.parametrize("n", [1, 9, 49, 196, 784, 1000, 1031, 3136, 12544, 2**16 + 1])
def test_block_length_divides_the_map_and_stays_short(n):
    block = fused.block_length(n)
    assert n % block == 0
    assert 16 <= block <= 1024 or block == n
    if any(n % d == 0 for d in range(16, 1025)):
        assert block <= 1024  # a divisor in range exists: it is used
    assert fused.block_length(112 * 112) == 256 and fused.block_length(7 * 7) == 49


@pytest.mark.parametrize("shape", SHAPES)
def test_first_argmax_is_torch_argmax_first_occurrence_and_nan_included(shape):
    b, c, n = shape
    x = awkward_maps(b, c, n, seed=n)
    block = fused.block_length(n)
    blocks = x.view(b, c, n // block, block)
    block_max = blocks.amax(3)
    rows, chans = (t.flatten() for t in torch.meshgrid(torch.arange(b), torch.arange(c), indexing="ij"))
    got = fused.first_argmax(blocks, block_max, block_max.amax(2), rows, chans)
    assert torch.equal(got, x.argmax(2).flatten())
    if n > 1:
        assert int(got[2 * c + 1]) == 0  # a tie between the first and last positions: the first
    some_rows, some_chans = torch.tensor([2, 0, 1]), torch.tensor([1, 0, 2])  # a subset, in any order
    subset = fused.first_argmax(blocks, block_max, block_max.amax(2), some_rows, some_chans)
    assert torch.equal(subset, x.argmax(2)[some_rows, some_chans])


def check_numbers(x: torch.Tensor, out: tuple[torch.Tensor, ...] | None) -> None:
    """The kernel's numbers of maps ``x`` against PyTorch on the whole map and float64 moments."""
    assert out is not None, "the C kernel could not be built here; see the warning"
    maximum, argmax, mean, var, active = out
    b, c, n = x.shape
    np.testing.assert_array_equal(maximum.numpy(), x.amax(2).numpy())  # (NaN where the map has one, as amax)
    assert torch.equal(argmax, x.argmax(2))  # the first maximum, or the first NaN
    assert torch.equal(active, (x > 0).sum(2))
    d = x.double()
    finite = torch.isfinite(d).all(2)
    np.testing.assert_allclose(mean[finite].double().numpy(), d.mean(2)[finite].numpy(), rtol=3e-7, atol=1e-7)
    exact_var = d.var(2, correction=0)[finite]
    np.testing.assert_allclose(var[finite].double().numpy(), exact_var.numpy(), rtol=2e-6, atol=1e-6)
    assert float(var[2, 0]) == 0.0 and float(mean[2, 0]) == 2.5
    assert not torch.isfinite(mean[~finite]).all()  # NaN / inf maps give non-finite moments (left out later)
    if n > 1:
        assert int(argmax[2, 1]) == 0 and int(argmax[1, 1]) == n - 1 and int(argmax[0, 0]) == n // 3
    m2, v2, a2 = per_image_moments(x)  # the PyTorch path: the same to float rounding
    assert torch.equal(a2, active)
    np.testing.assert_allclose(mean[finite].numpy(), m2[finite].numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", KERNEL_SHAPES)
def test_kernel_numbers_equal_direct_answers(shape):
    b, c, n = shape
    x = awkward_maps(b, c, n, seed=7 * n)
    check_numbers(x, fused.map_numbers(x))
    t = x.transpose(0, 1).contiguous().transpose(0, 1)  # maps that are not contiguous: copied, same numbers
    assert not t.is_contiguous()
    for a, w in zip(fused.map_numbers(t), fused.map_numbers(x)):
        assert torch.equal(a.nan_to_num(nan=-1.0), w.nan_to_num(nan=-1.0))


VECTOR_KERNEL = platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma", "bmi1"} <= set(native._cpu_features().split())


@pytest.mark.parametrize("by_mean", [False, True], ids=["max", "mean"])
def test_positions_are_found_where_the_score_reaches_the_channels_threshold(by_mean):
    """Only those maps can enter a top-k whose k-th best is the threshold: the others need no position."""
    x = awkward_maps(4, 6, 3136, seed=11)
    full = fused.map_numbers(x)
    assert full is not None
    score = (full[2] if by_mean else full[0]).double()
    threshold = score.nan_to_num(nan=0.0).median(0).values  # some maps of each channel below, some above
    threshold[3], threshold[4] = -float("inf"), float("inf")  # every map; none but the infinite
    got = fused.map_numbers(x, threshold, by_mean=by_mean)
    assert got is not None
    for a, b in zip(got[:1] + got[2:], full[:1] + full[2:]):  # the other numbers: the same bytes
        assert torch.equal(a.nan_to_num(nan=-1.0), b.nan_to_num(nan=-1.0))
    reach = score >= threshold
    assert reach[:, 3].all() and not reach[:, 4].any()
    assert torch.equal(got[1][reach], x.argmax(2)[reach])
    others = got[1][~reach]
    assert ((others == -1) | (others == x.argmax(2)[~reach])).all()  # (maps with NaN are always located)
    if VECTOR_KERNEL:
        assert int((others == -1).sum()) >= int((~reach).sum()) - 3  # all but the three NaN / inf maps


def _numbers_on(x: torch.Tensor, threads: int) -> list[torch.Tensor]:
    """The kernel's numbers of maps ``x`` on ``threads`` threads (called directly: PyTorch's own pool untouched)."""
    fn = native.kernel()
    assert fn is not None, native.failure()
    b, c, n = x.shape
    out = [torch.empty((b, c)), torch.empty((b, c), dtype=torch.int64), torch.empty((b, c)), torch.empty((b, c)),
           torch.empty((b, c), dtype=torch.int64)]
    assert fn(x.data_ptr(), b * c, n, c, None, 0, *(t.data_ptr() for t in out), threads) == 0
    return out


def test_a_maps_numbers_do_not_depend_on_its_batch_or_the_threads():
    """What makes resumed and multi-process atlases equal: each map's numbers come from that map alone."""
    x = awkward_maps(6, 5, 12544, seed=3)
    whole = fused.map_numbers(x)
    assert whole is not None
    for threads in (1, 2, 3, 4):
        for a, w in zip(_numbers_on(x, threads), whole):  # (every size above the kernel's parallel threshold)
            assert torch.equal(a.nan_to_num(nan=-1.0), w.nan_to_num(nan=-1.0))
    for i, threads in zip(range(6), [1, 2, 3, 1, 4, 2]):
        alone = _numbers_on(x[i : i + 1].clone(), threads)
        for a, w in zip(alone, whole):
            assert torch.equal(a[0].nan_to_num(nan=-1.0), w[i].nan_to_num(nan=-1.0))


def _net(kind: str) -> tuple[nn.Module, torch.Tensor, list[str]]:
    torch.manual_seed(11)
    if kind == "image":
        net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2)).eval()
        return net, torch.randn(21, 3, 34, 34, generator=torch.Generator().manual_seed(5)), ["0", "2"]
    net = nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.Conv1d(5, 4, 3, stride=2)).eval()
    return net, torch.randn(21, 2, 1002, generator=torch.Generator().manual_seed(5)), ["0", "2"]


@pytest.mark.parametrize("kind", ["image", "sequence"])
@pytest.mark.parametrize("score", ["max", "mean"])
def test_fused_atlas_equals_the_pytorch_paths(monkeypatch, kind, score):
    net, x, layers = _net(kind)
    opts = dict(layers=layers, k=4, batch_size=5, score=score, progress=False, receptive="none")
    monkeypatch.setenv("FEATUREMAPS_FUSED", "0")
    plain = build_atlas(net, x, **opts)
    monkeypatch.delenv("FEATUREMAPS_FUSED")
    calls = []
    real = reducer_module.map_numbers
    unlocated = []

    def spy(flat, *args, **kwargs):
        calls.append(flat.shape)
        out = real(flat, *args, **kwargs)
        unlocated.append(int((out[1] < 0).sum()))
        return out

    monkeypatch.setattr(reducer_module, "map_numbers", spy)
    real_merge, merged_in = reducer_module.AtlasReducer.merge, []

    def merge_spy(self, taken):
        merged_in.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return real_merge(self, taken)

    monkeypatch.setattr(reducer_module.AtlasReducer, "merge", merge_spy)
    fast = build_atlas(net, x, **opts)
    assert len(calls) == 2 * 5  # both layers, every batch: the kernel ran (by default)
    # every batch merged in the worker, beside the next forward, on one thread (PyTorch's threads in the
    # main thread are untouched)
    assert merged_in == [(False, 1)] * 5 and threading.current_thread() is threading.main_thread()
    if VECTOR_KERNEL:  # after the first batch most maps cannot enter: their positions were not looked for
        assert unlocated[:2] == [0, 0] and sum(unlocated) > 0
    for layer in plain.layers():
        a, b = plain.stats(layer), fast.stats(layer)
        for c in plain.channels(layer):
            pa, pb = plain.top_examples(layer, c), fast.top_examples(layer, c)
            assert [(e.index, e.position) for e in pb] == [(e.index, e.position) for e in pa]
            if score == "max":
                assert [e.score for e in pb] == [e.score for e in pa]
            else:
                np.testing.assert_allclose([e.score for e in pb], [e.score for e in pa], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(b.max, a.max)
        np.testing.assert_array_equal(b.active_fraction, a.active_fraction)
        np.testing.assert_array_equal(b.count, a.count)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b.std, a.std, rtol=1e-5, atol=1e-7)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """No kernel loaded in this process yet, and an empty cache folder of the test's own."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("FEATUREMAPS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


def test_no_compiler_warns_once_and_the_pytorch_path_runs(monkeypatch, fresh_kernel):
    net, x, layers = _net("image")
    opts = dict(layers=layers, k=3, batch_size=7, progress=False, receptive="none")
    monkeypatch.setenv("FEATUREMAPS_FUSED", "0")
    plain = build_atlas(net, x, **opts)
    monkeypatch.delenv("FEATUREMAPS_FUSED")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fell_back = build_atlas(net, x, **opts)
        again = build_atlas(net, x, **opts)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "C kernel could not be built (" in messages[0]
    assert "FEATUREMAPS_FUSED=0" in messages[0]
    assert not fused.wanted(torch.zeros(2, 3, 4), "auto")  # decided once per process
    for atlas in (fell_back, again):  # the very same path as FEATUREMAPS_FUSED=0: the same bytes
        for layer in plain.layers():
            for c in plain.channels(layer):
                assert atlas.top_examples(layer, c) == plain.top_examples(layer, c)
            np.testing.assert_array_equal(atlas.stats(layer).mean, plain.stats(layer).mean)
            np.testing.assert_array_equal(atlas.stats(layer).std, plain.stats(layer).std)


def test_the_kernel_is_compiled_once_then_loaded_and_a_damaged_file_is_rebuilt(monkeypatch, fresh_kernel):
    assert native.kernel() is not None
    built = list(fresh_kernel.glob("map_numbers-*.so"))
    assert len(built) == 1 and not list(fresh_kernel.glob("*.tmp"))  # (no temporary file left)
    if os.name == "posix":
        assert stat.S_IMODE(fresh_kernel.stat().st_mode) == 0o700
    compiled = []
    real = native._compile
    monkeypatch.setattr(native, "_compile", lambda *a: compiled.append(a) or real(*a))
    monkeypatch.setattr(native, "_lib", None)  # a new process, as it were: the file is loaded
    x = awkward_maps(3, 3, 196, seed=1)
    check_numbers(x, fused.map_numbers(x))
    assert compiled == []
    damaged = built[0].with_suffix(".damaged")
    damaged.write_bytes(b"not a shared library")
    os.replace(damaged, built[0])  # (a new file: this process's mapped library stays intact)
    # a new process (this one's dlopen would hand back the library it has): no error, the file is built again
    code = ("import warnings; warnings.simplefilter('error'); from featuremaps.atlas import native; "
            "assert native.kernel() is not None, native.failure()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "FEATUREMAPS_CACHE_DIR": str(fresh_kernel.parent)})
    assert done.returncode == 0, done.stderr
    assert built[0].read_bytes()[:4] == b"\x7fELF" if sys.platform.startswith("linux") else True


def test_compiling_removes_kernels_unused_for_a_month_and_loading_marks_a_kernel_used(monkeypatch, fresh_kernel):
    day = 86400.0
    fresh_kernel.mkdir(parents=True)
    old, recent, other = (fresh_kernel / f"map_numbers-{n}.so" for n in ("old", "recent", "other"))
    for path, age in ((old, native.STALE_DAYS + 1), (recent, native.STALE_DAYS - 1), (other, 400)):
        path.write_bytes(b"a kernel of another version")
        os.utime(path, (time.time() - age * day,) * 2)
    kept = fresh_kernel / "notes.txt"
    kept.write_text("not a kernel")
    os.utime(kept, (0, 0))
    assert native.kernel() is not None  # compiled: the folder is pruned
    left = sorted(p.name for p in fresh_kernel.iterdir())
    built = [n for n in left if n not in ("map_numbers-recent.so", "notes.txt")]
    assert len(built) == 1 and built[0].startswith("map_numbers-") and "map_numbers-recent.so" in left
    assert "notes.txt" in left and not old.exists() and not other.exists()
    # a later process loads the kernel two days on: its time is set to now, so it is not taken for stale
    target = fresh_kernel / built[0]
    os.utime(target, (time.time() - 2 * day,) * 2)
    monkeypatch.setattr(native, "_lib", None)
    assert native.kernel() is not None
    assert time.time() - target.stat().st_mtime < 60


def test_a_compiler_that_refuses_the_cpu_tuning_builds_the_portable_kernel(monkeypatch, fresh_kernel, tmp_path):
    """Without -march=native (refused here by a wrapper) the portable C path is built: the same answers."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on this machine")  # (then the test above covers the fallback)
    wrapper = tmp_path / "cc-no-native"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-march=native*) echo "unsupported option" >&2; exit 1;; esac\n'
                       f'exec "{cc}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    for shape in KERNEL_SHAPES:
        x = awkward_maps(*shape, seed=shape[2])
        check_numbers(x, fused.map_numbers(x))
    assert native.failure() is None and len(list(Path(fresh_kernel).glob("*.so"))) == 1


def test_which_maps_take_the_kernel(monkeypatch):
    maps = torch.zeros(2, 8, 1031)
    assert fused.wanted(maps, "auto") and not fused.wanted(maps, "0")
    assert not fused.wanted(maps.double(), "auto")  # float32 maps only (others: PyTorch's path)
    assert not fused.wanted(torch.zeros(2, 8, 0), "auto")  # no positions
    monkeypatch.setattr(native, "_failed", "RuntimeError: earlier")
    assert not fused.wanted(maps, "auto")
    monkeypatch.setenv("FEATUREMAPS_FUSED", "off")
    assert fused.fused_mode() == "auto"  # an unknown value: the default
    monkeypatch.setenv("FEATUREMAPS_FUSED", "0")
    assert fused.fused_mode() == "0"


@pytest.mark.parametrize("order", ["increasing", "decreasing", "shuffled"])
def test_topk_with_many_ties_equals_a_sorted_list_whatever_the_reading_order(order):
    """The merge that skips the sort by index when the data come in order gives the lexicographic top-k."""
    from featuremaps.atlas import TopK

    gen = torch.Generator().manual_seed(9)
    scores = torch.randint(0, 4, (40, 3), generator=gen).double()  # four values: ties everywhere
    scores[5, 0] = float("nan")
    ids = {"increasing": torch.arange(40), "decreasing": torch.arange(40).flip(0),
           "shuffled": torch.randperm(40, generator=gen)}[order] + 100
    top = TopK(3, k=5)
    for start in range(0, 40, 6):
        sl = slice(start, start + 6)
        pos = torch.zeros(scores[sl].shape, dtype=torch.long) + ids[sl, None]
        top.update(scores[sl], ids[sl], pos, -pos)
    for c in range(3):
        ranked = sorted(range(40), key=lambda i: (-(float(scores[i, c]) if scores[i, c] == scores[i, c] else -1e9),
                                                  int(ids[i])))[:5]
        assert [e.index for e in top.examples(c)] == [int(ids[i]) for i in ranked]
        assert [e.position for e in top.examples(c)] == [(int(ids[i]), -int(ids[i])) for i in ranked]


@pytest.mark.parametrize("with_locate", [False, True])
def test_topk_merging_only_the_channels_with_a_candidate_equals_a_sorted_list(with_locate):
    """Long runs: most batches have candidates in a few channels only (the merge then touches only those)."""
    from featuremaps.atlas import TopK

    gen = torch.Generator().manual_seed(4)
    images, channels, k = 300, 40, 3
    # scores fall over the run (later images rarely enter), with ties, NaN and a late burst in a few channels
    scores = torch.randint(0, 6, (images, channels), generator=gen).double() + torch.linspace(20, 0, images)[:, None]
    scores[250:260, :3] += 50.0
    scores[17, 5] = float("nan")
    ids = torch.arange(images) + 1000
    top = TopK(channels, k=k)
    located = []

    def locate(rows, chans):
        located.append(int(rows.numel()))
        return batch_ids[rows] + chans, -chans

    for start in range(0, images, 7):
        sl = slice(start, start + 7)
        batch_ids = ids[sl]
        if with_locate:
            top.update(scores[sl], batch_ids, locate=locate)
        else:
            pos = batch_ids[:, None] + torch.arange(channels)[None, :]
            top.update(scores[sl], batch_ids, pos, -torch.arange(channels).expand(len(batch_ids), -1))
    for c in range(channels):
        ranked = sorted(range(images), key=lambda i: (-(float(scores[i, c]) if scores[i, c] == scores[i, c] else -1e9),
                                                      int(ids[i])))[:k]
        assert [e.index for e in top.examples(c)] == [int(ids[i]) for i in ranked]
        assert [e.position for e in top.examples(c)] == [(int(ids[i]) + c, -c) for i in ranked]
    if with_locate:  # located only the entries that entered a top-k (late batches: few or none)
        assert sum(located) < images * channels // 4


def _numbers_in_child(queue) -> None:  # (module level: picklable)
    x = awkward_maps(4, 8, 12544, seed=5)
    out = _numbers_on(x, 2)  # the parent's OpenMP threads are not in this process: one thread must do it all
    queue.put([t.nan_to_num(nan=-1.0).tolist() for t in out])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_the_kernel_in_a_forked_child_neither_hangs_nor_differs():
    """A forked child has none of its parent's OpenMP threads (the runtime would wait for them forever)."""
    import multiprocessing

    x = awkward_maps(4, 8, 12544, seed=5)
    parent = _numbers_on(x, 2)  # the OpenMP team is started here, before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_numbers_in_child, args=(queue,))
    child.start()
    try:
        got = queue.get(timeout=120)
        child.join(timeout=60)
    finally:
        if child.is_alive():  # (hung: waiting for threads it does not have)
            child.kill()
    assert child.exitcode == 0
    assert got == [t.nan_to_num(nan=-1.0).tolist() for t in parent]


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the runtime is found in /proc/self/maps (Linux)")
def test_the_kernel_runs_on_pytorchs_own_threads_and_runtime():
    """No threads of its own (they were placed on the caller's core inside forward hooks) and no second runtime."""
    runtime = native.openmp_runtime()
    assert runtime is not None and runtime.name.startswith("lib")  # PyTorch's Linux builds load one
    torch.ones(1 << 22).mul(2).sum()  # PyTorch's threads exist now
    before = _threads()
    x = awkward_maps(8, 8, 12544, seed=2)
    _numbers_on(x, torch.get_num_threads())  # (more than PyTorch's would make the runtime's team larger)
    assert _threads() <= before  # (a thread of an earlier test may have ended meanwhile)
    with open("/proc/self/maps", encoding="utf-8") as f:
        loaded = {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}
    runtimes = {Path(p).name for p in loaded if Path(p).name.startswith(("libgomp", "libiomp5", "libomp"))}
    assert runtimes == {runtime.name}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads are listed in /proc/self/task (Linux)")
def test_one_thread_starts_no_threads_and_leaves_other_threads_counts_alone():
    """In a thread of our own, PyTorch's operations and the library's calls inside one_thread() start no team of
    threads beside the forward's; the main thread's count stays as it is meanwhile, and the thread's own after."""
    torch.ones(1 << 22).mul(2).sum()  # PyTorch's threads (the main thread's team) exist now
    count = torch.get_num_threads()
    inside, outside, seen = threading.Event(), threading.Event(), {}

    def work():
        before = _threads()
        with native.one_thread():
            torch.ones(1 << 22).mul(2).sum()  # (a parallel operation: a team of this thread's own, elsewhere)
            _numbers_on(awkward_maps(8, 8, 12544, seed=2), native.threads())
            seen["inside"] = (torch.get_num_threads(), native.threads(), _threads() - before)
            inside.set()
            outside.wait(timeout=60)
        seen["after"] = (torch.get_num_threads(), native.threads())

    thread = threading.Thread(target=work)
    thread.start()
    assert inside.wait(timeout=60)
    main = (torch.get_num_threads(), native.threads())
    outside.set()
    thread.join(timeout=60)
    assert seen["inside"] == (1, 1, set())
    assert main == (count, count) and seen["after"] == (count, count)


def test_without_an_openmp_runtime_the_kernel_is_built_for_one_thread(monkeypatch, fresh_kernel):
    monkeypatch.setattr(native, "openmp_runtime", lambda: None)
    x = awkward_maps(6, 5, 12544, seed=4)
    one, two = _numbers_on(x, 1), _numbers_on(x, 2)
    check_numbers(x, two)
    for a, b in zip(one, two):
        assert torch.equal(a.nan_to_num(nan=-1.0), b.nan_to_num(nan=-1.0))
    built = list(fresh_kernel.glob("*.so"))
    assert len(built) == 1
    if shutil.which("readelf"):  # linked against no OpenMP runtime
        assert "omp" not in subprocess.run(["readelf", "-d", str(built[0])], capture_output=True, text=True).stdout


def _sorted_top(scores: torch.Tensor, ids: torch.Tensor, flat: torch.Tensor, width: int, k: int, c: int):
    """Channel ``c``'s top-k of every row seen, by a plain sort: (score desc, NaN as -inf; index asc)."""
    rows = sorted(range(len(ids)), key=lambda i: (-(float(scores[i, c]) if scores[i, c] == scores[i, c] else -1e300),
                                                  int(ids[i])))[:k]
    at = [int(flat[i, c]) for i in rows]
    return ([int(ids[i]) for i in rows], [divmod(a, width) if width else (0, a) for a in at])


@pytest.mark.parametrize("order", ["increasing", "shuffled"])
def test_the_kernels_topk_merge_equals_a_sorted_list_and_the_pytorch_merge(order):
    """Several layers in one call (image rows, 1-D maps), ties, NaN and -inf, batches in and out of index order."""
    from featuremaps.atlas import TopK
    from featuremaps.atlas.topk import update_all

    if native.function("fm_topk_merge") is None:
        pytest.skip(f"no C kernel here: {native.failure()}")  # (the PyTorch merge is tested on its own above)
    gen = torch.Generator().manual_seed(12)
    images, k, widths, channels = 50, 4, [7, 0, 3], [5, 3, 2]
    scores = [torch.randint(0, 5, (images, c), generator=gen).float() for c in channels]  # ties everywhere
    scores[0][3, 1] = float("nan")
    scores[1][:, 2] = -float("inf")  # a channel whose every score is -inf: its slots still fill, by index
    scores[2][5, 0] = float("inf")
    flats = [torch.randint(0, 21, (images, c), generator=gen) for c in channels]
    ids = torch.arange(images) * 3 + 7
    if order == "shuffled":
        ids = ids[torch.randperm(images, generator=gen)]
    ours = [TopK(c, k) for c in channels]
    theirs = [TopK(c, k) for c in channels]
    for start in range(0, images, 8):
        sl = slice(start, start + 8)
        batch = [(s[sl].contiguous(), f[sl].contiguous(), w) for s, f, w in zip(scores, flats, widths)]
        assert fused.merge_topk([(t.score, t.index, t.y, t.x) for t in ours], batch, ids[sl])
        update_all(theirs, [s for s, _, _ in batch], ids[sl],
                   [f // w if w else torch.zeros_like(f) for _, f, w in batch],
                   [f % w if w else f for _, f, w in batch])
    for layer, (c, w) in enumerate(zip(channels, widths)):
        for ch in range(c):
            want_ids, want_pos = _sorted_top(scores[layer], ids, flats[layer], w, k, ch)
            got = ours[layer].examples(ch)
            assert [e.index for e in got] == want_ids and [e.position for e in got] == want_pos
        for name in ("score", "index", "y", "x"):  # the same bytes as PyTorch's merge
            assert torch.equal(getattr(ours[layer], name), getattr(theirs[layer], name))
    assert float(ours[2].score[0, 0]) == float("inf") and bool((ours[1].score[2] == -float("inf")).all())


def test_the_kernels_topk_merge_refuses_what_it_cannot_take_and_an_entry_without_a_position():
    from featuremaps.atlas import TopK
    from featuremaps.errors import FeatureMapsError

    if native.function("fm_topk_merge") is None:
        pytest.skip(f"no C kernel here: {native.failure()}")
    top = TopK(2, 2)
    state = (top.score, top.index, top.y, top.x)
    before = [t.clone() for t in state]
    ids = torch.tensor([4, 5])
    flat = torch.zeros(2, 2, dtype=torch.int64)
    assert not fused.merge_topk([state], [(torch.ones(2, 2, dtype=torch.float64), flat, 3)], ids)  # not float32
    assert not fused.merge_topk([state], [(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.int64), 3)], ids)
    strided = (top.score, top.index, torch.zeros(2, 4, dtype=torch.int64)[:, ::2], top.x)  # not contiguous
    assert not fused.merge_topk([strided], [(torch.ones(2, 2), flat, 3)], ids)
    assert all(torch.equal(a, b) for a, b in zip(state, before))  # nothing changed
    with pytest.raises(FeatureMapsError, match="has no position"):
        fused.merge_topk([state], [(torch.ones(2, 2), torch.full((2, 2), -1), 3)], ids)
