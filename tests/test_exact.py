"""ExactSum's CPU paths (the C library's, and NumPy's grouped sums without it): the same limbs as the per-value
path and as exact rational arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import TypeVar

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from featuremaps.atlas import ExactSum, build_atlas
from featuremaps.atlas import exact
from featuremaps.errors import FeatureMapsError

T = TypeVar("T")


@contextmanager
def per_value() -> Iterator[None]:
    """Force today's per-value split (every batch has at least _GROUP_ROWS = 0 rows)."""
    saved = exact._GROUP_ROWS
    exact._GROUP_ROWS = 0
    try:
        yield
    finally:
        exact._GROUP_ROWS = saved


def both(run: Callable[[], T]) -> tuple[T, T]:
    """``run()`` with the grouped path, then with the per-value path."""
    grouped = run()
    with per_value():
        return grouped, run()


def floor_sums(values: np.ndarray) -> list[int]:
    """Per column, the exact sum of ``floor(v * 2**96)``: what ExactSum keeps (an independent oracle)."""
    return [sum(math.floor(Fraction(float(x)) * (1 << 96)) for x in values[:, c]) for c in range(values.shape[1])]


# magnitudes mixed within a column: zeros, -0.0, subnormals, bits below 2**-96, integers, float32 squares, huge
VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0**-96, -(2.0**-96), 2.0**-97, -(2.0**-97), 5e-324, -5e-324,
                     3 * 2.0**-100, -(3 * 2.0**-100), 2.0**243, -(2.0**243), math.nextafter(2.0**244, 0)]),
    st.floats(-1e30, 1e30),
    st.floats(-1e-25, 1e-25),
    st.floats(-1e-300, 1e-300),
    st.integers(-(2**40), 2**40).map(float),
    st.floats(-(2.0**50), 2.0**50, width=32).map(lambda x: float(x) * float(x)),
    st.floats(-(2.0**243), 2.0**243),
)
MATRICES = arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 5)), elements=VALUES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=MATRICES)
def test_grouped_limbs_equal_the_per_value_limbs_and_exact_floor_sums(values):
    v = torch.from_numpy(values)
    flat = torch.zeros(exact.LIMBS * v.shape[1], dtype=torch.int64)
    assert exact._add_grouped(v, flat, v.shape[1])  # the grouped path itself, not a fallback
    direct = flat.view(exact.LIMBS, -1)
    exact._carry(direct)

    def run() -> ExactSum:
        s = ExactSum(v.shape[1])
        s.add(v)
        return s

    grouped, old = both(run)
    assert torch.equal(grouped.limbs, old.limbs)
    assert torch.equal(direct, old.limbs)
    assert grouped.integers() == floor_sums(values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=MATRICES, threads=st.sampled_from([1, 2, 3]))
def test_the_c_librarys_limbs_equal_the_per_value_limbs_and_exact_floor_sums(values, threads):
    if exact.native.function("fm_exact_add") is None:
        pytest.skip(f"no C library here: {exact.native.failure()}")  # (NumPy's grouped path is tested above)
    v = torch.from_numpy(values)
    flat = torch.zeros(exact.LIMBS * v.shape[1], dtype=torch.int64)
    assert exact.native.function("fm_exact_add")(v.data_ptr(), v.shape[0], v.shape[1], flat.data_ptr(), threads) == 0
    direct = flat.view(exact.LIMBS, -1)
    exact._carry(direct)
    with per_value():
        old = _added(values)
    assert torch.equal(direct, old.limbs)
    assert ExactSum.integers(_with_limbs(direct)) == floor_sums(values)


def _with_limbs(limbs: torch.Tensor) -> ExactSum:
    s = ExactSum(int(limbs.shape[1]))
    s.limbs = limbs
    return s


def test_the_c_library_adds_nothing_when_a_value_is_not_finite_or_beyond_the_range():
    if exact.native.function("fm_exact_add") is None:
        pytest.skip(f"no C library here: {exact.native.failure()}")
    for bad in (math.inf, -math.inf, math.nan, 2.0**244, -(2.0**250)):
        v = torch.ones(600, 500, dtype=torch.float64)  # (above the size at which it takes several threads)
        v[599, 499] = bad
        flat = torch.zeros(exact.LIMBS * 500, dtype=torch.int64)
        assert not exact._add_native(v, flat, 500)
        assert not bool(flat.any())
    v[599, 499] = math.nextafter(2.0**244, 0)  # the largest value in range
    assert exact._add_native(v, flat, 500)


BELOW_2_100 = float(np.nextafter(np.float32(2.0**100), np.float32(0)))  # the largest float32 mean counted
# float32 means and variances as the atlas's kernel gives them: subnormals, tiny, integers, up to the edge of
# the means counted (2**100) and the largest float32 variance
MEANS32 = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 2.0**-126, BELOW_2_100, -BELOW_2_100]),
    st.floats(-(2.0**99), 2.0**99, width=32),
    st.floats(-(2.0**-100), 2.0**-100, width=32),
)
VARS32 = st.one_of(st.sampled_from([0.0, 1e-45, 3.4028234663852886e38]), st.floats(0, 2.0**120, width=32))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(1, 30), st.integers(1, 4)), data=st.data(), weighted=st.booleans())
def test_moments_added_from_float32_equal_the_float64_columns_added_value_by_value(shape, data, weighted):
    """[m | v | m*m] from float32 in C: the limbs of the per-value path and the exact floor sums (batches this
    small take one thread; the test below takes several)."""
    if exact.native.function("fm_moments_add") is None:
        pytest.skip(f"no C library here: {exact.native.failure()}")
    m = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=MEANS32)))
    v = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=VARS32)))
    weight = torch.arange(1, 3 * shape[1] + 1) * 7919 if weighted else None
    fused = ExactSum(3 * shape[1])
    assert fused.add_moments(m, v, 2.0**100, weight=weight)
    assert fused.add_moments(m, v, 2.0**100, weight=weight)  # twice: the second into the pending sum
    columns = torch.cat([m.double(), v.double(), m.double() * m.double()], 1)
    with per_value():
        old = ExactSum(3 * shape[1])
        old.add(columns, weight=weight)
        old.add(columns, weight=weight)
    assert torch.equal(fused.limbs, old.limbs)
    w = [1] * columns.shape[1] if weight is None else weight.tolist()
    assert fused.integers() == [2 * s * k for s, k in zip(floor_sums(columns.numpy()), w)]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_moments_of_a_batch_large_enough_for_several_threads_equal_the_per_value_path(threads):
    """Column blocks shared among threads: the same limbs as the float64 columns added value by value."""
    if exact.native.function("fm_moments_add") is None:
        pytest.skip(f"no C library here: {exact.native.failure()}")
    gen = torch.Generator().manual_seed(threads)
    m = torch.randn(64, 3001, generator=gen) * torch.logspace(-20, 20, 3001)  # (above MIN_PARALLEL values)
    v = torch.rand(64, 3001, generator=gen) * torch.logspace(-30, 30, 3001)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused = ExactSum(3 * 3001)
        assert fused.add_moments(m, v, 2.0**100)
    finally:
        torch.set_num_threads(before)
    with per_value():
        old = ExactSum(3 * 3001)
        old.add(torch.cat([m.double(), v.double(), m.double() ** 2], 1))
    assert torch.equal(fused.limbs, old.limbs)


def test_the_c_library_adds_no_moments_when_a_map_is_left_out():
    """A mean not finite or of 2**100 or more, or a variance not finite: nothing added, the sum unchanged."""
    if exact.native.function("fm_moments_add") is None:
        pytest.skip(f"no C library here: {exact.native.failure()}")
    s = ExactSum(3 * 300)
    m, v = torch.ones(400, 300), torch.ones(400, 300)  # (above the size at which it takes several threads)
    assert s.add_moments(m, v, 2.0**100)
    before = s.limbs.clone()
    for which, bad in (("mean", math.nan), ("mean", math.inf), ("mean", -(2.0**100)), ("var", math.nan),
                       ("var", math.inf)):
        mm, vv = m.clone(), v.clone()
        (mm if which == "mean" else vv)[399, 299] = bad
        assert not s.add_moments(mm, vv, 2.0**100)
        assert torch.equal(s.limbs, before), (which, bad)
    assert not s.add_moments(m, v, 2.0**101)  # beyond the range its squares may take
    assert not s.add_moments(m.double(), v.double(), 2.0**100)  # float32 only
    assert not s.add_moments(m[:, :100], v[:, :100], 2.0**100)  # three columns per mean
    assert torch.equal(s.limbs, before)
    m[0, 0] = BELOW_2_100
    assert s.add_moments(m, v, 2.0**100)


@settings(max_examples=200, deadline=None)
@given(limbs=arrays(np.int64, st.tuples(st.just(exact.LIMBS), st.integers(1, 6)), elements=st.one_of(
    st.integers(-(2**61), 2**61), st.sampled_from([0, -1, 2**32 - 1, 2**32, -(2**32)]))))
def test_the_c_librarys_carry_equals_the_loop_and_keeps_each_number(limbs):
    """One pass from the lowest limb up gives the loop's normalized limbs, and the numbers they stand for."""
    if exact.native.function("fm_carry") is None:
        pytest.skip(f"no C library here: {exact.native.failure()}")
    fused, loop = torch.from_numpy(limbs.copy()), torch.from_numpy(limbs.copy())
    exact._carry(fused)
    exact._carry_loop(loop)
    assert torch.equal(fused, loop)
    assert bool(((fused[:-1] >= 0) & (fused[:-1] < 2**32)).all())
    number = [sum(int(limbs[i, c]) << (32 * i) for i in range(exact.LIMBS)) for c in range(limbs.shape[1])]
    assert number == [sum(int(fused[i, c]) << (32 * i) for i in range(exact.LIMBS)) for c in range(limbs.shape[1])]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.integers(1, 5).flatmap(lambda cols: st.lists(
    st.tuples(arrays(np.float64, st.tuples(st.integers(1, 12), st.just(cols)), elements=VALUES),
              st.one_of(st.none(), st.integers(0, exact._MAX_WEIGHT),
                        st.lists(st.integers(0, exact._MAX_WEIGHT), min_size=cols, max_size=cols))),
    min_size=1, max_size=5)))
def test_weighted_adds_equal_the_per_value_path_and_rational_arithmetic(batches):
    cols = batches[0][0].shape[1]
    weights = [w if w is None or isinstance(w, int) else torch.tensor(w) for _, w in batches]

    def run() -> ExactSum:
        s = ExactSum(cols)
        for (values, _), w in zip(batches, weights):
            s.add(torch.from_numpy(values), weight=w)  # the same weights wait unweighted: read once, at the end
        return s

    grouped, old = both(run)
    assert torch.equal(grouped.limbs, old.limbs)
    expected = [0] * cols
    for values, w in batches:
        factor = [1] * cols if w is None else [w] * cols if isinstance(w, int) else w
        expected = [e + f * x for e, f, x in zip(expected, factor, floor_sums(values))]
    assert grouped.integers() == expected


def test_a_column_spanning_the_whole_range_takes_several_rounds_within_the_pending_bound(monkeypatch):
    """Each round adds one integer per column (< 2**33 a limb, like one value); add() counts _GROUP_ROUNDS."""
    mantissa = 2 - 2.0**-52  # all 53 bits set: each round leaves the low bits of one value to the next
    column = [mantissa * 2.0 ** (243 - 50 * i) for i in range(7)] + [-mantissa * 2.0**-90, -(2.0**-120), 2.0**-1070]
    values = np.array(column)[:, None] * np.array([1.0, -1.0])
    rounds: list[int] = []
    real = exact._add_integers

    def spy(total, pos, columns, out, channels):
        rounds.append(len(columns))
        real(total, pos, columns, out, channels)

    monkeypatch.setattr(exact, "_add_integers", spy)
    monkeypatch.setattr(exact, "_add_native", lambda *a: False)  # NumPy's grouped rounds, as without the library
    grouped, old = both(lambda: _added(values))
    assert 6 <= len(rounds) <= exact._GROUP_ROUNDS
    assert torch.equal(grouped.limbs, old.limbs)
    assert grouped.integers() == floor_sums(values)


def _added(values: np.ndarray, weight: torch.Tensor | int | None = None) -> ExactSum:
    s = ExactSum(values.shape[1] if values.ndim == 2 else values.shape[0])
    s.add(torch.from_numpy(values), weight=weight)
    return s


@pytest.mark.parametrize("huge", [2.0**244, -(2.0**244), 2.0**300])
def test_values_beyond_the_range_raise_on_both_paths(huge):
    values = np.array([[1.5, 2.0], [huge, 3.0]])
    with pytest.raises(FeatureMapsError, match="beyond the exact range"):
        _added(values)
    with per_value(), pytest.raises(FeatureMapsError, match="beyond the exact range"):
        _added(values)


def test_the_largest_value_in_range_is_added_exactly():
    values = np.array([[math.nextafter(2.0**244, 0), -(2.0**243)], [1.0, 2.0**-96]])
    grouped, old = both(lambda: _added(values))
    assert torch.equal(grouped.limbs, old.limbs)
    assert grouped.integers() == floor_sums(values)


def test_non_finite_values_take_the_per_value_path_unchanged():
    values = np.array([[1.0, math.nan, 2.5], [math.inf, 1.0, -math.inf]])
    grouped, old = both(lambda: _added(values))
    assert torch.equal(grouped.limbs, old.limbs)


def test_zeros_negative_zeros_a_single_row_and_a_vector():
    zeros = np.array([[0.0, -0.0, 0.0], [-0.0, -0.0, 0.0]])
    assert _added(zeros).integers() == [0, 0, 0]
    row = np.array([[-(2.0**-100), 5e-324, -3.75]])  # one row: floors to -1 and 0; exact
    assert _added(row).integers() == [-1, 0, -15 * 2**94]
    assert _added(row[0]).integers() == _added(row).integers()


@pytest.mark.parametrize("rows", [4096, exact._GROUP_ROWS])
def test_many_rows(rows):
    """4096 rows are grouped (their sums still fit int64); from _GROUP_ROWS on, the per-value path adds them."""
    gen = np.random.default_rng(rows)
    values = np.stack([
        gen.standard_normal(rows) * 1e6,
        gen.standard_normal(rows).astype(np.float32).astype(np.float64) ** 2,
        np.where(gen.random(rows) < 0.5, gen.standard_normal(rows) * 1e-31, gen.integers(-50, 50, rows)),
    ], 1)
    grouped, old = both(lambda: _added(values))
    assert torch.equal(grouped.limbs, old.limbs)
    assert grouped.integers() == floor_sums(values)


@pytest.mark.parametrize("rows", [1, 2, 3, 15, 16, 63, 64, 4095, exact._GROUP_ROWS - 1])
def test_columns_of_equal_largest_values_sum_without_overflow(rows):
    """The headroom: ``rows`` values just below a power of two, all of one sign, must not overflow int64."""
    top = math.nextafter(2.0, 0)  # 53 bits set
    values = np.array([[top * 2.0**100, -top, -top * 2.0**-60, top * 2.0**-97]] * rows)
    grouped, old = both(lambda: _added(values))
    assert torch.equal(grouped.limbs, old.limbs)
    assert grouped.integers() == floor_sums(values)


def test_atlas_statistics_are_bit_identical_to_the_per_value_path(monkeypatch):
    """End to end: build_atlas with the moments added from float32 in C, and with the float64 columns added by
    the C library or NumPy's grouped path, gives the same statistics as the per-value path, bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 7, 3, padding=1), nn.Tanh(), nn.Conv2d(7, 4, 1))
    x = torch.randn(24, 3, 10, 10)
    x *= torch.logspace(-12, 6, 24)[:, None, None, None]  # per-image means of very different sizes per channel
    x[3] = 0.0
    opts = {"layers": ["0", "2", "4"], "k": 2, "batch_size": 4, "progress": False}
    moments: list[bool] = []
    real_moments = ExactSum.add_moments

    def spy_moments(self, *a, **k):
        moments.append(real_moments(self, *a, **k))
        return moments[-1]

    monkeypatch.setattr(ExactSum, "add_moments", spy_moments)
    fused = build_atlas(model, x, **opts)
    assert moments and all(moments) == (exact.native.function("fm_moments_add") is not None)
    calls: list[bool] = []
    real_native, real_grouped = exact._add_native, exact._add_grouped

    def spy(v, out, channels):  # (the C library's path, or NumPy's where the library cannot be had)
        calls.append(real_native(v, out, channels) or real_grouped(v, out, channels))
        return calls[-1]

    monkeypatch.setattr(ExactSum, "add_moments", lambda *a, **k: False)  # the float64 columns
    monkeypatch.setattr(exact, "_add_native", spy)
    monkeypatch.setattr(exact, "_add_grouped", lambda *a: False)
    grouped = build_atlas(model, x, **opts)
    assert calls and all(calls)
    monkeypatch.setattr(exact, "_GROUP_ROWS", 0)
    old = build_atlas(model, x, **opts)
    for layer in opts["layers"]:
        for other in (fused, grouped):
            a, b = other.stats(layer), old.stats(layer)
            for field in ("mean", "std", "active_fraction", "max", "count", "excluded"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_running_stats_paths_give_the_same_state_bit_for_bit(monkeypatch):
    """The usual batch (every map counts) has its moments added from float32 by the C library, or (without it)
    skips the masks: the same state, bit for bit, as the path that applies them. A batch with an excluded map
    is refused by the C library and takes the masks."""
    from featuremaps.atlas import native
    from featuremaps.atlas import stats as stats_module

    gen = torch.Generator().manual_seed(3)
    batches = []
    for rows, count in ((5, 50), (1, 51), (7, 52)):  # other counts: each batch is added on its own
        mean = torch.randn(rows, 6, generator=gen) * torch.logspace(-3, 3, 6)
        var = torch.rand(rows, 6, generator=gen) * 4.0
        active = torch.randint(0, 50, (rows, 6), generator=gen)
        batches.append((count, mean, var, active, mean + var.sqrt() * 3))
    batches.append((50, *(t.clone() for t in batches[0][1:])))
    batches[-1][1][2, 4] = float("nan")  # one batch with an excluded map: the masked path for it
    real_counted, real_moments = stats_module._all_counted, ExactSum.add_moments

    def state(path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
        taken: list[str] = []

        def moments(self: ExactSum, *a: object, **k: object) -> bool:
            added = real_moments(self, *a, **k)
            taken.append(f"C {added}")
            return added

        def counted(*a: torch.Tensor) -> bool:
            answer = real_counted(*a) and path != "masked"
            taken.append(f"unmasked {answer}")
            return answer

        monkeypatch.setattr(ExactSum, "add_moments", moments)
        monkeypatch.setattr(stats_module, "_all_counted", counted)
        if path != "C":
            monkeypatch.setenv("FEATUREMAPS_FUSED", "0")
        s = stats_module.RunningStats(6)
        for count, *rest in batches:
            s.update(count, *rest)
        state = s.state_dict()
        monkeypatch.undo()
        return state, taken

    (masked, masked_path), (unmasked, unmasked_path) = state("masked"), state("unmasked")
    assert masked_path == ["C False", "unmasked False"] * 4
    assert unmasked_path == ["C False", "unmasked True"] * 3 + ["C False", "unmasked False"]
    states = [unmasked]
    if native.function("fm_moments_add") is not None:
        fused, fused_path = state("C")
        assert fused_path == ["C True"] * 3 + ["C False", "unmasked False"]
        states.append(fused)
    for other in states:
        assert other.keys() == masked.keys()
        for key in other:
            assert torch.equal(other[key], masked[key]), key
    assert int(masked["excluded"][4]) == 1 and masked["count"].tolist() == [915] * 4 + [865, 915]
