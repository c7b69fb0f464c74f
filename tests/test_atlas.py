"""The atlas: streaming top-k and statistics, exact merges, torchrun, resume, patches, pages, CLI."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import tracemalloc
from html import unescape
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import featuremaps as fm
from featuremaps.atlas import (
    Atlas,
    ExactSum,
    ReceptiveField,
    RunningStats,
    TopK,
    build_atlas,
    load_atlas,
    receptive_field,
    receptive_field_chain,
)
from featuremaps.errors import FeatureMapsError

import atlas_helper

REPORT_CSS = resources.files("featuremaps.pages").joinpath("static/report.css").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- helpers


def identity_conv() -> nn.Module:
    """Channel c of the output is colour channel c of the input: the answer is known by construction."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
    return nn.Sequential(conv)


def peak_images(spec: list[list[tuple[float, int, int]]], size: int = 6) -> torch.Tensor:
    """spec[i][c] = (value, y, x): image i has one peak per channel, zero elsewhere."""
    x = torch.zeros(len(spec), 3, size, size)
    for i, chans in enumerate(spec):
        for c, (v, y, xx) in enumerate(chans):
            x[i, c, y, xx] = v
    return x


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- known answers


SPEC = [  # (value, y, x) for channels 0, 1, 2
    [(1.0, 0, 0), (2.0, 1, 1), (0.0, 0, 0)],
    [(5.0, 2, 3), (2.0, 4, 4), (0.0, 0, 0)],
    [(3.0, 5, 5), (7.0, 0, 5), (0.0, 0, 0)],
    [(5.0, 1, 2), (1.0, 3, 0), (0.0, 0, 0)],   # ties image 1 on channel 0: the lower index wins
    [(4.0, 4, 1), (7.0, 2, 2), (0.0, 0, 0)],   # ties image 2 on channel 1
    [(-1.0, 3, 3), (0.5, 5, 0), (0.0, 0, 0)],
    [(5.0, 0, 4), (3.0, 1, 5), (0.0, 0, 0)],   # a third 5.0
]


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_topk_on_images_made_to_activate_known_channels_with_ties(batch_size):
    atlas = build_atlas(identity_conv(), peak_images(SPEC), layers="0", k=4, batch_size=batch_size, progress=False)
    assert atlas.layers() == ["0"] and list(atlas.channels("0")) == [0, 1, 2]
    assert atlas.top_examples("0", 0) == [(1, 5.0, (2, 3)), (3, 5.0, (1, 2)), (6, 5.0, (0, 4)), (4, 4.0, (4, 1))]
    assert atlas.top_examples("0", 1) == [(2, 7.0, (0, 5)), (4, 7.0, (2, 2)), (6, 3.0, (1, 5)), (0, 2.0, (1, 1))]
    # channel 2 is zero everywhere: all tie, the lowest indices win, the argmax is the first position
    assert atlas.top_examples("0", 2) == [(i, 0.0, (0, 0)) for i in range(4)]
    # image 5's negative peak: its max is 0 (the rest of the map), so it is not in channel 0's top 4
    assert 5 not in [e.index for e in atlas.top_examples("0", 0)]


def test_topk_by_mean_and_the_statistics_equal_a_direct_computation():
    x = peak_images(SPEC)
    atlas = build_atlas(identity_conv(), x, layers="0", k=2, score="mean", batch_size=2, progress=False)
    seventh = float(np.float32(7.0) / np.float32(36.0))  # per-image moments are in the maps' precision
    assert atlas.top_examples("0", 1) == [(2, seventh, (0, 5)), (4, seventh, (2, 2))]
    assert [e.index for e in atlas.top_examples("0", 0)] == [1, 3]
    stats = atlas.stats("0")
    flat = x.double().transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(stats.mean, flat.mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.std, flat.std(1, correction=0).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(stats.max, flat.amax(1).numpy())
    np.testing.assert_array_equal(stats.active_fraction, (flat > 0).double().mean(1).numpy())
    np.testing.assert_array_equal(stats.count, [7 * 36] * 3)


def test_statistics_are_stable_where_naive_sums_cancel():
    base = 2.0**23  # mean >> std: E[x^2] - E[x]^2 would lose most digits (all of them in float32)
    maps = base + torch.tensor([[[0.0, 2.0]], [[4.0, 6.0]]])  # per-image means base+1, base+5 (exact in float32)
    s = RunningStats(1)
    s.update_from_maps(maps)
    r = s.result()
    assert r.mean[0] == base + 3
    assert r.std[0] == np.sqrt(5.0)  # exact: neither the within- nor the between-image term cancels
    naive = maps.flatten().square().mean() - maps.flatten().mean() ** 2
    assert abs(float(naive) - 5.0) > 1.0


def test_exact_sums_do_not_depend_on_order():
    vals = torch.tensor([1e30, 1.0, -1e30, 1e-20, 3.0, -2.5e-7], dtype=torch.float64)[:, None]
    results = set()
    for seed in range(6):
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        s = ExactSum(1)
        for i in perm.tolist():
            s.add(vals[i : i + 1])
        results.add(tuple(s.limbs.flatten().tolist()))
    assert len(results) == 1


def test_exact_sums_with_changing_weights_equal_rational_arithmetic():
    """Batches wait, unweighted, until the weights change or the sum is read: the result must not show it."""
    from fractions import Fraction

    gen = torch.Generator().manual_seed(5)
    s, expected = ExactSum(2), [Fraction(0), Fraction(0)]
    weights = [torch.tensor([3, 5]), torch.tensor([3, 5]), torch.tensor([7, 1]), 2, None, torch.tensor([7, 1])]
    for w in weights:
        vals = (torch.randn(4, 2, generator=gen, dtype=torch.float64) * 1e6).round() / 64  # exact in 2**-96
        s.add(vals, weight=w)
        factor = [1, 1] if w is None else (torch.as_tensor(w).expand(2)).tolist()
        for c in range(2):
            expected[c] += factor[c] * sum(Fraction(v) for v in vals[:, c].tolist())
        if isinstance(w, int):
            assert s.fractions() == expected  # a read in between flushes; later adds still count
    assert s.fractions() == expected


def test_queued_statistics_equal_statistics_added_one_batch_at_a_time(monkeypatch):
    """Without the C library RunningStats queues batches with the same counts; with it, it adds each batch at
    once: the bytes must not depend on when, or by which path, it adds them."""
    from featuremaps.atlas import stats as st

    gen = torch.Generator().manual_seed(9)
    batches = [(n, torch.randn(b, 3, generator=gen) * 100, torch.rand(b, 3, generator=gen),
                torch.randint(0, n + 1, (b, 3), generator=gen), torch.randn(b, 3, generator=gen))
               for n, b in [(16, 2), (16, 3), (9, 1), (9, 4), (16, 2)]]
    states = {}
    for how in ("queued", "one at a time", "C library"):
        with monkeypatch.context() as m:
            if how != "C library":
                m.setenv("FEATUREMAPS_FUSED", "0")
            if how == "one at a time":
                m.setattr(st, "_QUEUE_VALUES", 1)  # every batch added at once
            s = RunningStats(3)
            for batch in batches:
                s.update(*batch)
            if how == "queued":
                assert s._queue  # (the last batch still waits)
            elif how == "C library" and s.moments.adds_moments():
                assert not s._queue
            states[how] = s.state_dict()
    a = states["queued"]
    for b in states.values():
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert a["count"].tolist() == [16 * 7 + 9 * 5] * 3


def test_deferred_range_check_flags_huge_values_and_raises_at_the_next_read():
    """On an accelerator the range check must not wait for the device: it is flagged, then raised."""
    from featuremaps.atlas import exact as st

    out = torch.zeros(st.LIMBS, 2, dtype=torch.int64)
    flag = torch.zeros((), dtype=torch.bool)
    st._add_limbs(torch.tensor([[1.5, 2.0**300]], dtype=torch.float64), out.view(-1), 0, 2, flag)
    assert bool(flag)
    one = ExactSum(1)
    one.add(torch.tensor([1.5], dtype=torch.float64))
    st._carry(out)
    assert out[:, 0].tolist() == one.limbs[:, 0].tolist()  # the finite value was added all the same
    s = ExactSum(1)
    s.add(torch.tensor([1.0], dtype=torch.float64))
    s._overflow = torch.ones((), dtype=torch.bool)  # as an accelerator add of a huge value leaves it
    with pytest.raises(FeatureMapsError, match="beyond the exact range"):
        s.fractions()


def test_batch_indices_are_made_on_the_device_only_for_progressions():
    from featuremaps.datapass.sources import _progression

    assert _progression([4, 6, 8, 10]) == (4, 2, 4)  # rank 0 of 2: every other index
    assert _progression([7]) == (7, 1, 1)
    assert _progression([]) is None
    assert _progression([1, 2, 4]) is None  # an unreadable item (3) was left out: copied instead
    assert _progression([5, 5]) is None and _progression([6, 4, 2]) is None
    for values in ([4, 6, 8, 10], [7], [0, 3, 6]):
        first, step, n = _progression(values)
        assert (torch.arange(n) * step + first).tolist() == values


# --------------------------------------------------------------------------- merges (property test)


def _random_batches(rng: random.Random, channels: int, images: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    out = []
    for i in range(images):
        # few distinct scores so that ties are frequent; some NaN
        score = torch.randint(0, 4, (1, channels), generator=gen).double()
        score[torch.rand(1, channels, generator=gen) < 0.05] = float("nan")
        out.append({
            "index": torch.tensor([i]), "score": score,
            "y": torch.randint(0, 9, (1, channels), generator=gen),
            "x": torch.randint(0, 9, (1, channels), generator=gen),
            "mean": torch.randn(1, channels, generator=gen) * 10 ** rng.randint(-3, 6),
            "var": torch.rand(1, channels, generator=gen) * 10 ** rng.randint(-3, 3),
            "active": torch.randint(0, 17, (1, channels), generator=gen),
            "max": torch.randn(1, channels, generator=gen),
        })
    return out


def _pass(items: list[dict[str, torch.Tensor]], channels: int, k: int) -> tuple[TopK, RunningStats]:
    top, stats = TopK(channels, k), RunningStats(channels)
    if items:
        b = {key: torch.cat([it[key] for it in items]) for key in items[0]}
        top.update(b["score"], b["index"], b["y"], b["x"])
        stats.update(16, b["mean"], b["var"], b["active"], b["max"])
    return top, stats


def _same(a: tuple[TopK, RunningStats], b: tuple[TopK, RunningStats]) -> bool:
    sa = {**a[0].state_dict(), **a[1].state_dict()}
    sb = {**b[0].state_dict(), **b[1].state_dict()}
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


@pytest.mark.parametrize("seed", range(12))
def test_merging_partial_results_in_any_order_equals_one_pass(seed):
    """Seeded randomized property test: random partitions, random batch sizes, random merge trees."""
    rng = random.Random(seed)
    channels, k = rng.randint(1, 5), rng.randint(1, 6)
    items = _random_batches(rng, channels, rng.randint(0, 40))
    one = _pass(items, channels, k)
    # one pass fed in random batches and in a random order
    shuffled = items[:]
    rng.shuffle(shuffled)
    top, stats = TopK(channels, k), RunningStats(channels)
    pos = 0
    while pos < len(shuffled):
        size = rng.randint(1, 7)
        part_top, part_stats = _pass(shuffled[pos : pos + size], channels, k)
        top, stats = top.merge(part_top), stats.merge(part_stats)
        pos += size
    assert _same(one, (top, stats))
    # a random partition merged as a random tree
    parts = []
    pos = 0
    while pos < len(shuffled):
        size = rng.randint(1, 9)
        parts.append(_pass(shuffled[pos : pos + size], channels, k))
        pos += size
    parts.append(_pass([], channels, k))  # an empty shard (a rank with no images)
    while len(parts) > 1:
        i, j = sorted(rng.sample(range(len(parts)), 2))
        a, b = parts.pop(j), parts.pop(i)
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        parts.append((first[0].merge(second[0]), first[1].merge(second[1])))
    assert _same(one, parts[0])


def test_batch_size_does_not_change_a_single_byte(tmp_path):
    """Exact-arithmetic model: each image's activations are the same bits in any batch, so must the atlas be."""
    model = atlas_helper.tiny_net()
    x = torch.rand(11, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    for bs in (1, 4, 11):
        build_atlas(model, x, layers=["1", "3", "6"], k=3, batch_size=bs, progress=False, out=tmp_path / f"a{bs}")
    ref = files(tmp_path / "a1")
    assert files(tmp_path / "a4") == ref and files(tmp_path / "a11") == ref


def _conv1d_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.Conv1d(5, 4, 3, stride=2)).eval()


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_accelerator_path_gives_the_cpu_paths_atlas(monkeypatch, kind):
    """The path taken on GPUs (argmax of every map, Welford moments, deferred checks), run on the CPU."""
    from featuremaps.datapass import device as _device

    if kind == "image":
        make, x, layers = atlas_helper.tiny_net, torch.rand(13, 3, 20, 20, generator=torch.Generator().manual_seed(4)), ["1", "3"]
    else:
        make, x, layers = _conv1d_net, torch.randn(13, 2, 30, generator=torch.Generator().manual_seed(4)), ["0", "2"]
    opts = dict(layers=layers, k=3, batch_size=4, progress=False, receptive="none")
    cpu = build_atlas(make(), x, **opts)
    monkeypatch.setattr(_device, "_FORCE", True)
    fast = build_atlas(make(), x, **opts)
    for layer in cpu.layers():
        for c in cpu.channels(layer):
            assert fast.top_examples(layer, c) == cpu.top_examples(layer, c)
        a, b = cpu.stats(layer), fast.stats(layer)
        np.testing.assert_array_equal(b.max, a.max)
        np.testing.assert_array_equal(b.active_fraction, a.active_fraction)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b.std, a.std, rtol=1e-5, atol=1e-7)
    if kind == "sequence":  # 1-D maps: positions (0, x) with x the index along the sequence
        assert any(e.position[1] > 0 for c in fast.channels("2") for e in fast.top_examples("2", c))
        assert all(e.position[0] == 0 for c in fast.channels("2") for e in fast.top_examples("2", c))


# --------------------------------------------------------------------------- torchrun


def test_two_process_torchrun_equals_one_process(tmp_path):
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=8)  # 9 files: DistributedSampler pads one index for 2 ranks
    args = ["atlas", str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layers", "1,3,6",
            "--k", "3", "--batch-size", "2", "--quiet"]
    single = atlas_helper.run_helper([*args, "-o", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    multi = atlas_helper.run_helper([*args, "-o", str(tmp_path / "two")], processes=2)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert one.keys() == two.keys() and one == two  # data, patches and pages: the same bytes
    atlas = load_atlas(tmp_path / "two")
    assert atlas.num_images == 8  # the padded index is not counted twice
    assert [name for name, _ in atlas.skipped] == ["b/broken.png"]
    assert "wrote" in multi.stdout and multi.stdout.count("atlas of 8 images") == 1  # rank 0 reports
    assert not list(tmp_path.glob(".*partial*"))  # checkpoints removed


# --------------------------------------------------------------------------- resume


class _Interrupting(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, stop_at: int | None) -> None:
        self.x, self.stop_at, self.reads = x, stop_at, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.stop_at is not None and i == self.stop_at:
            raise KeyboardInterrupt
        self.reads.append(i)
        return self.x[i], i % 3


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3))
    x = torch.rand(13, 3, 10, 10)
    opts = {"layers": ["1", "2"], "k": 3, "batch_size": 2, "checkpoint_every": 4, "progress": False}
    build_atlas(model, _Interrupting(x, None), out=tmp_path / "full", **opts)

    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, _Interrupting(x, 9), out=tmp_path / "resumed", **opts)
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    assert list((tmp_path / ".resumed.partial").iterdir())
    again = _Interrupting(x, None)
    atlas = build_atlas(model, again, out=tmp_path / "resumed", **opts)
    # the pass continued after the last checkpoint (4 batches of 2); then the patches read the top images once each
    assert again.reads[:5] == [8, 9, 10, 11, 12]
    tops = {e.index for layer in atlas.layers() for c in atlas.channels(layer) for e in atlas.top_examples(layer, c)}
    assert sorted(again.reads[5:]) == sorted(tops)
    assert files(tmp_path / "resumed") == files(tmp_path / "full")
    assert not (tmp_path / ".resumed.partial").exists()


class _StopAfter(nn.Module):
    """Raises KeyboardInterrupt in the middle of its ``calls``-th forward (after the captured layer ran)."""

    def __init__(self, calls: int | None) -> None:
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        if self.calls is not None and self.seen == self.calls:
            raise KeyboardInterrupt
        return x


def test_an_interrupt_inside_the_forward_checkpoints_the_last_complete_batch(tmp_path):
    conv = nn.Conv2d(3, 4, 3)
    x = torch.rand(10, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    opts = {"layers": "0", "k": 2, "batch_size": 2, "checkpoint_every": 100, "progress": False}
    build_atlas(nn.Sequential(conv, _StopAfter(None)), x, out=tmp_path / "full", **opts)
    with pytest.raises(KeyboardInterrupt):  # during the 4th batch, after layer "0" saw it
        build_atlas(nn.Sequential(conv, _StopAfter(4)), x, out=tmp_path / "resumed", **opts)
    again = _StopAfter(None)
    build_atlas(nn.Sequential(conv, again), x, out=tmp_path / "resumed", **opts)
    assert again.seen == 2  # batches 4 and 5 (the receptive fields of this architecture were measured once, by the first build)
    assert files(tmp_path / "resumed") == files(tmp_path / "full")


def test_an_interrupt_while_a_checkpoint_is_saved_keeps_the_last_good_one(tmp_path, monkeypatch):
    """Saving adds the queued statistics: cut there, it must not be saved half-added; resuming still agrees."""
    from featuremaps.atlas import stats as st

    conv = nn.Conv2d(3, 4, 3)
    x = torch.rand(12, 3, 9, 9, generator=torch.Generator().manual_seed(4))
    opts = {"layers": "0", "k": 2, "batch_size": 2, "checkpoint_every": 4, "progress": False}
    build_atlas(nn.Sequential(conv), x, out=tmp_path / "full", **opts)
    real_add, calls = st.RunningStats._add, []

    def flaky_add(self, *args):  # the second save's drain: add part of it, then Ctrl-C
        calls.append(1)
        if len(calls) == 2:
            self.count += 1
            raise KeyboardInterrupt
        return real_add(self, *args)

    monkeypatch.setattr(st.RunningStats, "_add", flaky_add)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(nn.Sequential(conv), x, out=tmp_path / "resumed", **opts)
    monkeypatch.setattr(st.RunningStats, "_add", real_add)
    build_atlas(nn.Sequential(conv), x, out=tmp_path / "resumed", **opts)
    assert files(tmp_path / "resumed") == files(tmp_path / "full")


def test_a_checkpoint_from_other_arguments_is_not_used(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 2, 3))
    x = torch.rand(6, 3, 8, 8)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, _Interrupting(x, 4), out=tmp_path / "a", k=2, batch_size=2, progress=False)
    again = _Interrupting(x, None)
    with pytest.warns(UserWarning, match="other arguments"):
        build_atlas(model, again, out=tmp_path / "a", k=3, batch_size=2, progress=False)
    assert again.reads[:6] == list(range(6))


# --------------------------------------------------------------------------- memory


def test_memory_stays_flat_when_the_dataset_grows():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    sizes, peaks = [], []
    for n in (24, 240):
        data = _Synthetic(n)
        tracemalloc.start()
        atlas = build_atlas(model, data, layers="1", k=5, batch_size=8, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        d = atlas.data["1"]
        sizes.append(sum(a.nbytes for a in (d.index, d.score, d.y, d.x, d.stats.mean, d.stats.std)))
        assert atlas.num_images == n
    assert sizes[0] == sizes[1]
    assert peaks[1] < 1.5 * peaks[0] + 200_000, peaks


class _Synthetic(torch.utils.data.Dataset):
    """Images made on the fly: the dataset itself holds nothing."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i))


# --------------------------------------------------------------------------- folders, bad images, pages


def test_bad_images_are_skipped_and_listed(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.jpg", "<img src=x onerror=alert(1)>.png"]):
        fm.save_image(np.full((40, 50, 3), 60 * i, np.uint8), root / name)
    (root / "sub" / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "truncated.png").write_bytes((root / "a.png").read_bytes()[:60])
    (root / "notes.txt").write_text("ignored: not an image suffix")
    model, preprocess = fm.load_model(atlas_helper.tiny_net())
    atlas = build_atlas(model, root, preprocess=preprocess, layers="1", k=2, progress=False, out=tmp_path / "atlas")
    assert atlas.num_images == 3
    assert [n for n, _ in atlas.skipped] == ["sub/empty.png", "text.jpg", "truncated.png"]
    assert all(reason for _, reason in atlas.skipped)
    assert atlas.images == ["<img src=x onerror=alert(1)>.png", "a.png", "sub/b.jpg", "sub/empty.png", "text.jpg",
                            "truncated.png"]
    index = (tmp_path / "atlas" / "index.html").read_text()
    assert "truncated.png" in index and "empty.png" in index
    page = (tmp_path / "atlas" / "layers" / "000.html").read_text()
    for html in (index, page):
        assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in (index + page)
        assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in unescape(html)
        assert "http://" not in html and "https://" not in html and "<script" not in html
    reloaded = load_atlas(tmp_path / "atlas")
    assert reloaded.skipped == atlas.skipped and reloaded.top_examples("1", 1) == atlas.top_examples("1", 1)


def test_worker_processes_give_the_same_atlas(tmp_path):
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=5)
    model, preprocess = fm.load_model(atlas_helper.tiny_net())
    opts = {"preprocess": preprocess, "layers": ["1", "6"], "k": 2, "batch_size": 2, "progress": False}
    build_atlas(model, images, num_workers=2, out=tmp_path / "workers", **opts)
    build_atlas(model, images, num_workers=0, out=tmp_path / "main", **opts)
    assert files(tmp_path / "workers") == files(tmp_path / "main")
    assert load_atlas(tmp_path / "workers").skipped[0][0] == "b/broken.png"


def test_save_is_atomic_and_refuses_foreign_folders(tmp_path):
    atlas = build_atlas(identity_conv(), peak_images(SPEC), layers="0", k=2, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(FeatureMapsError, match="holds other files"):
        atlas.save(tmp_path / "mine")
    out = atlas.save(tmp_path / "atlas")
    atlas.save(out)  # replacing a previous atlas is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "mine"]  # no temporary folders left


def test_errors_name_the_input_and_the_fix(tmp_path):
    model = identity_conv()
    x = peak_images(SPEC)
    with pytest.raises(FeatureMapsError, match="score='median'.*'max'"):
        build_atlas(model, x, score="median", progress=False)
    with pytest.raises(FeatureMapsError, match="k=0"):
        build_atlas(model, x, k=0, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureMapsError, match="no images found"):
        build_atlas(model, tmp_path / "empty", progress=False)
    (tmp_path / "one").mkdir()
    fm.save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "one" / "a.png")
    with pytest.raises(FeatureMapsError, match="preprocess="):
        build_atlas(model, tmp_path / "one", progress=False)
    with pytest.raises(fm.LayerNotFoundError):
        build_atlas(model, x, k=2, progress=False).top_examples("nope", 0)
    with pytest.raises(FeatureMapsError, match="not an atlas folder"):
        load_atlas(tmp_path)


def test_dataloader_with_labels_equals_the_dataset_and_1d_and_vector_layers_work():
    model = atlas_helper.tiny_net()  # exact arithmetic: the shuffled batches give the same bits
    x = torch.rand(9, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    data = torch.utils.data.TensorDataset(x, torch.arange(9))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    a = build_atlas(model, loader, layers=["1", "6"], k=2, progress=False)
    b = build_atlas(model, x, layers=["1", "6"], k=2, progress=False)
    assert a.layers() == b.layers() == ["1", "6"]
    for layer in ("1", "6"):
        for c in a.channels(layer):
            assert a.top_examples(layer, c) == b.top_examples(layer, c)
    assert all(e.position == (0, 0) for e in a.top_examples("6", 0))
    assert a.layer("6").receptive_field is not None and a.layer("6").receptive_field.method == "global"
    seq = nn.Sequential(nn.Conv1d(2, 3, 3))
    s = build_atlas(seq, torch.rand(5, 2, 20), layers="0", k=1, progress=False)
    assert s.top_examples("0", 0)[0].position[0] == 0


# --------------------------------------------------------------------------- receptive fields and patches


def test_receptive_field_of_a_small_conv_chain_computed_by_hand():
    chain = [nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(2, 1, 3, stride=2, dilation=2)]
    # conv 3x3 p1:      J=1 O=-1 R=3;  avgpool 2: J=2 O=-1 R=4;  conv 3x3 s2 d2: J=4 O=-1 R=4+2*2*2=12
    rf = receptive_field_chain(chain)
    assert (rf.stride, rf.offset, rf.size) == ((4.0, 4.0), (-1.0, -1.0), (12.0, 12.0))
    assert rf.box(2, 3) == (7, 11, 19, 23)
    model = nn.Sequential(*chain)
    assert receptive_field(model, "3", (3, 40, 40), method="chain") == rf
    measured = receptive_field(model, "3", (3, 40, 40), method="gradient")
    assert measured is not None and (measured.stride, measured.offset, measured.size) == (rf.stride, rf.offset, rf.size)


def test_gradient_fields_of_a_training_model_with_batch_norm():
    """Probe images are seeded separately: they must not mix (the capture runs in eval mode, then restores)."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 1, 3, padding=1))
    model.train()
    rf = receptive_field(model, "3", (3, 20, 20), method="gradient")
    assert rf is not None and rf.size == (5.0, 5.0) and rf.stride == (1.0, 1.0)
    assert all(m.training for m in model.modules())


def test_chain_is_not_trusted_through_functional_ops():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + x)

    with pytest.raises(FeatureMapsError, match="functional ops"):
        receptive_field(Residual(), "b", (1, 16, 16), method="chain")
    auto = receptive_field(Residual(), "b", (1, 16, 16))
    assert auto is not None and auto.method == "gradient" and auto.size == (5.0, 5.0)


def test_patches_are_the_receptive_field_crops_around_the_argmax(tmp_path):
    conv1 = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    conv2 = nn.Conv2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():  # both just pick the centre pixel: the argmax follows the input's bright pixel
        for conv in (conv1, conv2):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
    model = nn.Sequential(conv1, conv2)
    img = torch.linspace(0, 0.5, 16 * 16).reshape(1, 1, 16, 16).repeat(2, 1, 1, 1)
    img[0, 0, 9, 5] = 1.0  # conv2 position (4, 2) sees input rows 8..12, cols 4..8 (J=2, O=-1, R=5)
    img[1, 0, 1, 1] = 1.0  # position (0, 0): the field starts outside the image (gray)
    atlas = build_atlas(model, img, layers="1", k=2, progress=False)
    assert atlas.top_examples("1", 0) == [(0, 1.0, (4, 2)), (1, 1.0, (0, 0))]
    assert atlas.layer("1").receptive_field == ReceptiveField((2.0, 2.0), (-1.0, -1.0), (5.0, 5.0), "chain")
    assert atlas.patch_box("1", (4, 2)) == (7, 3, 12, 8)
    pixels = np.asarray(atlas.patch("1", 0, 0))
    expected = (img[0, 0, 7:12, 3:8] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(pixels[..., 0], expected)
    edge = np.asarray(atlas.patch("1", 0, 1))
    assert edge.shape == (5, 5, 3) and (edge[0] == 128).all() and (edge[:, 0] == 128).all()
    np.testing.assert_array_equal(edge[1:, 1:, 0], (img[1, 0, 0:4, 0:4] * 255).round().to(torch.uint8).numpy())
    out = atlas.save(tmp_path / "atlas", patch_size=20)
    from PIL import Image

    with Image.open(out / "patches" / "000" / "0.png") as sheet:
        assert sheet.size == (2 * 22 - 2, 20)


def test_patch_sheets_fit_the_examples_there_are(tmp_path):
    """k=9 over 4 images: a 2x2 sheet, not a 3x3 grid with blank cells."""
    from PIL import Image

    x = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    out = build_atlas(atlas_helper.tiny_net(), x, layers="1", k=9, progress=False).save(tmp_path / "a", patch_size=10)
    with Image.open(out / "patches" / "000" / "0.png") as sheet:
        assert sheet.size == (2 * 12 - 2, 2 * 12 - 2)


# --------------------------------------------------------------------------- CLI


def test_torchrun_with_more_processes_than_gpus_is_a_clear_usage_error(monkeypatch):
    import click

    from featuremaps.cli.dataset import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(click.UsageError, match=r"started 2 processes .* 1 GPU\(s\).*--nproc_per_node=1"):
        init_distributed("cuda")


def test_cli_builds_an_atlas_of_the_sample_photos(tmp_path):
    from featuremaps.cli.atlas import atlas_cmd

    samples = Path(fm.sample_image("cat")).parent
    out = tmp_path / "atlas"
    result = CliRunner().invoke(
        atlas_cmd, [str(samples), "--layers", "_blocks.15._project_conv", "--k", "2", "-o", str(out),
                    "--batch-size", "4", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "atlas of 4 images" in result.output and "wrote" in result.output
    # the time is split: the pass (and its rate, of the images read) apart from the patches and pages after it
    said = re.search(r"atlas of 4 images in ([\d.]+) s \(the pass ([\d.]+) s, ([\d.]+) images/s; "
                     r"then patches and pages ([\d.]+) s\)", result.output)
    assert said, result.output
    whole, pass_s, rate, rest = (float(v) for v in said.groups())
    assert pass_s + rest <= whole + 0.1 and rate > 0
    assert pass_s < 0.5 or rate == pytest.approx(4 / pass_s, rel=0.2)  # (both rounded to 0.1)
    atlas = load_atlas(out)
    assert atlas.layers() == ["_blocks.15._project_conv"] and len(list(atlas.channels(atlas.layers()[0]))) == 320
    assert atlas.images == sorted(p.name for p in samples.iterdir() if p.suffix == ".png")
    assert (out / "index.html").is_file() and (out / "layers" / "000.html").is_file()
    assert atlas.channel_href("_blocks.15._project_conv", 17) == "layers/000.html#c17"
    assert 'id="c17"' in (out / "layers" / "000.html").read_text()
    assert isinstance(atlas, Atlas)


# --------------------------------------------------------------------------- pages: style, CSP, escaping


class _PageParser(HTMLParser):
    """Collects every tag's attributes, the inline style text and the CSP of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.csp: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        self._in_style = tag == "style"
        if tag == "style":
            self.styles.append("")
        if tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.csp.append(a["content"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles[-1] += data


def _parse(html: str) -> _PageParser:
    p = _PageParser()
    p.convert_charrefs = False  # the style text exactly as written
    p.feed(html)
    p.close()
    return p


def _pages(folder: Path) -> dict[Path, str]:
    paths = [folder / "index.html", *sorted((folder / "layers").glob("*.html"))]
    return {p: p.read_text(encoding="utf-8") for p in paths}


def _check_page(path: Path, html: str, folder: Path) -> _PageParser:
    """The CSP allows exactly the inline style, relative images and data: URIs; nothing is remote."""
    page = _parse(html)
    assert len(page.styles) == 1 and len(page.csp) == 1, path
    style, csp = page.styles[0], page.csp[0]
    digest = base64.b64encode(hashlib.sha256(style.encode("utf-8")).digest()).decode("ascii")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["style-src"] == f"'sha256-{digest}'"
    assert directives["default-src"] == "'none'" and directives["img-src"] == "'self' data:"
    assert "script-src" not in directives and "unsafe" not in csp
    assert REPORT_CSS in style  # the report's stylesheet, reused
    for tag, attrs in page.tags:
        assert tag != "script" and "style" not in attrs, (path, tag, attrs)  # both would be blocked
        assert not any(name.startswith("on") for name in attrs), (path, tag, attrs)
        for key in ("src", "href"):
            if key in attrs:
                url = attrs[key]
                assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//|^/", url, re.I), (path, url)  # relative only
                target = (path.parent / url.split("#", 1)[0]).resolve()
                assert folder.resolve() in [target, *target.parents] and target.exists(), (path, url)
        if tag == "img":
            assert attrs.get("alt", "").strip(), (path, attrs)
    assert not re.search(r"https?://|url\(", html)
    return page


def test_pages_reuse_the_report_style_with_a_csp_hash_and_load_nothing_remote(tmp_path):
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=5)
    model, preprocess = fm.load_model(atlas_helper.tiny_net())
    out = tmp_path / "atlas"
    build_atlas(model, images, preprocess=preprocess, layers=["1", "3", "6"], k=4, progress=False, out=out)
    pages = _pages(out)
    assert len(pages) == 4
    for path, html in pages.items():
        _check_page(path, html, out)
    layer = pages[out / "layers" / "001.html"]
    assert 'href="000.html" rel="prev"' in layer and 'href="002.html" rel="next"' in layer
    assert layer.count('class="ch"') == 6 and 'id="c5"' in layer
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in layer


def test_an_xss_layer_name_is_rendered_as_text(tmp_path):
    name = "<img src=x onerror=alert(1)>"
    net = nn.Sequential()
    net.add_module(name, nn.Conv2d(3, 2, 3))
    atlas = build_atlas(net, torch.rand(3, 3, 8, 8), layers=[name], k=1, progress=False)
    assert atlas.layers() == [name]
    out = atlas.save(tmp_path / "atlas")
    for path, html in _pages(out).items():
        page = _check_page(path, html, out)
        assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        assert not any(attrs.get("src") == "x" for _, attrs in page.tags)
    assert unescape(_pages(out)[out / "layers" / "000.html"]).count(name) >= 2  # the title and the heading


# --------------------------------------------------------------------------- synthesized images


def test_synthesized_images_one_per_channel_shown_and_kept(tmp_path):
    model = atlas_helper.tiny_net()
    x = torch.rand(5, 3, 20, 20, generator=torch.Generator().manual_seed(4))
    out = tmp_path / "atlas"
    atlas = build_atlas(model, x, layers=["1", "6"], k=2, progress=False, out=out, synthesize=True, synth_steps=2,
                        synth_size=16)
    assert atlas.synthesis == {"steps": 2, "size": 16}
    assert sorted(p.relative_to(out).as_posix() for p in (out / "synth").rglob("*")) == [
        "synth/000", *[f"synth/000/{c}.jpg" for c in range(4)], "synth/001", *[f"synth/001/{c}.jpg" for c in range(6)]
    ]
    assert atlas.synthesized("6", 5).size == (16, 16)
    pages = _pages(out)
    for path, html in pages.items():
        _check_page(path, html, out)  # every image shown exists in the folder
    layer = pages[out / "layers" / "000.html"]
    for c in range(4):
        assert f'src="../synth/000/{c}.jpg"' in layer
        assert f'alt="An image synthesized to excite channel {c}"' in layer
    assert 'src="synth/001/0.jpg"' in pages[out / "index.html"]
    # kept by load_atlas + save
    again = load_atlas(out).save(tmp_path / "copy")
    assert files(again) == files(out)
    assert load_atlas(again).synthesis == {"steps": 2, "size": 16}


def test_synthesis_is_off_by_default_and_checked(tmp_path):
    x = torch.rand(4, 3, 12, 12)
    net = nn.Sequential(nn.Conv2d(3, 2, 3))
    out = build_atlas(net, x, layers="0", k=1, progress=False).save(tmp_path / "plain")
    assert not (out / "synth").exists() and load_atlas(out).synthesis is None
    assert all("synth/" not in html and "ynthesized" not in html for html in _pages(out).values())
    with pytest.raises(FeatureMapsError, match="synth_steps=0"):
        build_atlas(net, x, layers="0", progress=False, synthesize=True, synth_steps=0)
    with pytest.warns(UserWarning, match="RGB images"):
        seq = build_atlas(nn.Sequential(nn.Conv1d(2, 3, 3)), torch.rand(3, 2, 10), layers="0", k=1, progress=False,
                          synthesize=True, synth_steps=1)
    assert seq.synthesis is None


def test_cli_synthesize_flag(tmp_path):
    from featuremaps.cli.atlas import atlas_cmd

    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=3)
    out = tmp_path / "atlas"
    result = CliRunner().invoke(
        atlas_cmd, [str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layers", "3",
                    "--k", "2", "--synthesize", "--synth-steps", "2", "--synth-size", "16", "-o", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "synthesized images (2 steps)" in result.output
    assert len(list((out / "synth" / "000").glob("*.jpg"))) == 6
    assert 'src="../synth/000/5.jpg"' in (out / "layers" / "000.html").read_text()


def test_torchrun_ranks_share_the_synthesis_and_agree_with_one_process(tmp_path):
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=3)
    args = ["atlas", str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layers", "3,6",
            "--k", "2", "--quiet", "--synthesize", "--synth-steps", "3", "--synth-size", "16"]
    single = atlas_helper.run_helper([*args, "-o", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    multi = atlas_helper.run_helper([*args, "-o", str(tmp_path / "two")], processes=2)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert one.keys() == two.keys()
    synth = sorted(key for key in one if key.startswith("synth/"))
    assert len(synth) == 6 + 6  # every channel of both layers, each made by one of the two ranks
    assert all(one[key] == two[key] for key in one if key not in synth)
    from PIL import Image

    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img, dtype=np.int16)

    for key in synth:  # the same images up to floating-point rounding (different batches)
        assert np.abs(pixels(tmp_path / "one" / key) - pixels(tmp_path / "two" / key)).mean() < 2.0, key


# --------------------------------------------------------------------------- the progress protocol


def test_progress_callable_gets_stage_done_total_and_done_reaches_total():
    """progress= takes a callable(stage, done, total): images read per batch, then the synthesis steps."""
    calls = []
    x = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    build_atlas(net, x, layers="1", k=2, batch_size=3, receptive="none", synthesize=True, synth_steps=2,
                synth_size=8, progress=lambda stage, done, total: calls.append((stage, done, total)))
    atlas_calls = [c for c in calls if c[0] == "atlas"]
    # 7 images in batches of 3: 0 before the first batch, then 3, 6, 7 read
    assert atlas_calls == [("atlas", 0, 7), ("atlas", 3, 7), ("atlas", 6, 7), ("atlas", 7, 7)]
    synth = [c for c in calls if c[0] == "synthesis"]
    assert synth and all(total == 2 for _, _, total in synth)  # one layer, 2 steps
    assert [d for _, d, _ in synth] == sorted(d for _, d, _ in synth) and synth[-1][1] == 2
    assert {c[0] for c in calls} == {"atlas", "synthesis"}


def test_progress_true_and_false_run_and_a_bad_progress_is_refused():
    x = torch.rand(3, 3, 8, 8)
    net = nn.Sequential(nn.Conv2d(3, 2, 3))
    a = build_atlas(net, x, layers="0", k=1, progress=True)  # a bar only on a terminal: here, nothing
    b = build_atlas(net, x, layers="0", k=1, progress=False)
    assert a.top_examples("0", 0) == b.top_examples("0", 0)
    with pytest.raises(TypeError, match="progress="):
        build_atlas(net, x, layers="0", k=1, progress="yes")
