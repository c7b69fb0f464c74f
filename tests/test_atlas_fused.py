"""The fused map reduction (one compiled read of each map) against PyTorch's reductions and direct answers.

Every answer is computed independently: maxima, counts and argmax positions by
PyTorch on the whole map, means and variances in float64 from the values.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from featuremaps.atlas import build_atlas, fused
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
    return x


SHAPES = [(3, 4, 12544), (3, 3, 49), (3, 5, 196), (3, 3, 1000), (3, 3, 9), (3, 3, 1)]


@pytest.mark.parametrize("n", [1, 9, 49, 196, 784, 1000, 1031, 3136, 12544, 2**16 + 1])
def test_block_length_divides_the_map_and_stays_short(n):
    block = fused.block_length(n)
    assert n % block == 0
    assert 16 <= block <= 1024 or block == n
    if any(n % d == 0 for d in range(16, 1025)):
        assert block <= 1024  # a divisor in range exists: it is used
    assert fused.block_length(112 * 112) == 256 and fused.block_length(7 * 7) == 49


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_first_argmax_is_torch_argmax_first_occurrence_and_nan_included(monkeypatch, shape, compiled):
    monkeypatch.setattr(fused, "_MIN_COMPILED_HIT", 0)  # the compiled search for any number of maps
    b, c, n = shape
    x = awkward_maps(b, c, n, seed=n)
    block = fused.block_length(n)
    blocks = x.view(b, c, n // block, block)
    block_max = blocks.amax(3)
    rows, chans = (t.flatten() for t in torch.meshgrid(torch.arange(b), torch.arange(c), indexing="ij"))
    if compiled:
        assert fused.map_numbers(blocks) is not None  # (the compiled position search follows the kernel)
    got = fused.first_argmax(blocks, block_max, block_max.amax(2), rows, chans, compiled)
    assert (fused._hit_kernel is not None) or not compiled
    assert torch.equal(got, x.argmax(2).flatten())
    if n > 1:
        assert int(got[2 * c + 1]) == 0  # a tie between the first and last positions: the first
    some_rows, some_chans = torch.tensor([2, 0, 1]), torch.tensor([1, 0, 2])  # a subset, in any order
    subset = fused.first_argmax(blocks, block_max, block_max.amax(2), some_rows, some_chans, compiled)
    assert torch.equal(subset, x.argmax(2)[some_rows, some_chans])


@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_numbers_equal_direct_answers(shape):
    b, c, n = shape
    x = awkward_maps(b, c, n, seed=7 * n)
    block = fused.block_length(n)
    out = fused.map_numbers(x.view(b, c, n // block, block))
    assert out is not None, "torch.compile failed here; see the warning"
    block_max, maximum, mean, var, active = out
    torch.testing.assert_close(block_max, x.view(b, c, n // block, block).amax(3), rtol=0, atol=0, equal_nan=True)
    np.testing.assert_array_equal(maximum.numpy(), x.amax(2).numpy())  # (NaN where the map has one, as amax)
    assert torch.equal(active, (x > 0).sum(2))
    d = x.double()
    finite = torch.isfinite(d).all(2)
    np.testing.assert_allclose(mean[finite].double().numpy(), d.mean(2)[finite].numpy(), rtol=1e-6, atol=1e-7)
    exact_var = d.var(2, correction=0)[finite]
    np.testing.assert_allclose(var[finite].double().numpy(), exact_var.numpy(), rtol=2e-6, atol=1e-6)
    assert float(var[2, 0]) == 0.0 and float(mean[2, 0]) == 2.5
    assert not torch.isfinite(mean[~finite]).all()  # NaN / inf maps give non-finite moments (left out later)
    m2, v2, a2 = per_image_moments(x)  # the PyTorch path: the same to float rounding
    assert torch.equal(a2, active)
    np.testing.assert_allclose(mean[finite].numpy(), m2[finite].numpy(), rtol=1e-6, atol=1e-7)


def test_a_maps_numbers_do_not_depend_on_its_batch():
    """What makes resumed and multi-process atlases equal: each map's numbers come from that map alone."""
    x = awkward_maps(6, 5, 12544, seed=3)
    blocks = x.view(6, 5, 49, 256)
    whole = fused.map_numbers(blocks)
    assert whole is not None
    for i in range(6):
        alone = fused.map_numbers(blocks[i : i + 1].clone())
        assert alone is not None
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
    monkeypatch.setenv("FEATUREMAPS_FUSED", "1")
    calls = []
    real = reducer_module.map_numbers
    monkeypatch.setattr(reducer_module, "map_numbers", lambda blocks: calls.append(blocks.shape) or real(blocks))
    fast = build_atlas(net, x, **opts)
    assert len(calls) == 2 * 5  # both layers, every batch: the compiled path ran
    assert calls[0][2] > 1  # maps of several blocks
    for layer in plain.layers():
        a, b = plain.stats(layer), fast.stats(layer)
        for c in plain.channels(layer):
            pa, pb = plain.top_examples(layer, c), fast.top_examples(layer, c)
            assert [(e.index, e.position) for e in pb] == [(e.index, e.position) for e in pa]
            if score == "max":
                assert [e.score for e in pb] == [e.score for e in pa]
            else:
                np.testing.assert_allclose([e.score for e in pb], [e.score for e in pa], rtol=1e-6)
        np.testing.assert_array_equal(b.max, a.max)
        np.testing.assert_array_equal(b.active_fraction, a.active_fraction)
        np.testing.assert_array_equal(b.count, a.count)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b.std, a.std, rtol=1e-5, atol=1e-7)


def test_a_kernel_that_cannot_compile_warns_once_and_the_pytorch_path_runs(monkeypatch):
    net, x, layers = _net("image")
    opts = dict(layers=layers, k=3, batch_size=7, progress=False, receptive="none")
    monkeypatch.setenv("FEATUREMAPS_FUSED", "0")
    plain = build_atlas(net, x, **opts)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore details")

    monkeypatch.setattr(fused, "_kernel", None)
    monkeypatch.setattr(fused, "_failed", None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    monkeypatch.setenv("FEATUREMAPS_FUSED", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fell_back = build_atlas(net, x, **opts)
        again = build_atlas(net, x, **opts)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "could not be compiled (RuntimeError: no C++ compiler found)" in messages[0]
    for atlas in (fell_back, again):  # the very same path as FEATUREMAPS_FUSED=0: the same bytes
        for layer in plain.layers():
            for c in plain.channels(layer):
                assert atlas.top_examples(layer, c) == plain.top_examples(layer, c)
            np.testing.assert_array_equal(atlas.stats(layer).mean, plain.stats(layer).mean)
            np.testing.assert_array_equal(atlas.stats(layer).std, plain.stats(layer).std)


def test_the_automatic_choice_follows_the_dataset_and_map_sizes(monkeypatch):
    monkeypatch.setattr(fused, "_failed", None)
    maps = torch.zeros(2, 8, 1024)
    per_image = 8 * 1024
    assert fused.wanted(maps, fused.MIN_VALUES // per_image, "auto")
    assert not fused.wanted(maps, fused.MIN_VALUES // per_image - 1, "auto")
    assert not fused.wanted(maps, None, "auto")
    assert fused.wanted(maps, 1, "1") and not fused.wanted(maps, 10**9, "0")
    assert not fused.wanted(maps.double(), 10**9, "1")  # float32 maps only
    assert not fused.wanted(torch.zeros(2, 8, 1031), 10**9, "1")  # no block length in range: PyTorch's path
    monkeypatch.setattr(fused, "_failed", "RuntimeError: earlier")
    assert not fused.wanted(maps, 10**9, "1")
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
