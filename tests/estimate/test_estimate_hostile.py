"""Findings of a hostile review (issue 11): symbol identity, overflow, degenerate input.

Oracles: ``collections.Counter`` for counting (Python's own notion of one symbol),
the definitions evaluated in 60-digit arithmetic (mpmath) or by hand for the estimators.
"""

from __future__ import annotations

import collections
import math
import random
from decimal import Decimal
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crossentropy import Labels
from crossentropy.estimate import (
    METHODS,
    Counts,
    counts,
    cross_entropy,
    entropy,
    entropy_interval,
    kl_divergence,
)

# ---------------------------------------------------------------- one symbol, one rule

numbers_ = st.one_of(
    st.integers(-3, 40),
    st.integers(2**20 - 2, 2**20 + 2),  # either side of the dense table's limit
    st.integers(2**53 - 1, 2**53 + 2),  # where float64 stops telling integers apart
    st.integers(2**63 - 2, 2**63 + 2),  # int64 / uint64 boundary
    st.integers(2**64 - 2, 2**64 + 2),  # beyond uint64
    st.integers(-(2**63) - 2, -(2**63) + 2),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 40.0, 2.0**20, 2.0**53, 2.0**63, 2.0**64, 1e300]),
    st.sampled_from([math.inf, -math.inf, -2.5, 0.1]),
    st.booleans(),
)
symbols = st.one_of(numbers_, st.sampled_from(["a", "1", ""]), st.tuples(numbers_))


def as_counter(c: Counts) -> dict:
    return dict(c.items())


def check_against_counter(c: Counts, samples: list) -> None:
    oracle = collections.Counter(samples)
    assert as_counter(c) == dict(oracle)
    assert len(c) == len(oracle)
    assert c.total == len(samples)
    for symbol, count in oracle.items():
        assert symbol in c
        assert c[symbol] == count


@settings(max_examples=150, deadline=None)
@given(st.lists(symbols, max_size=30))
def test_counts_agree_with_counter_on_mixed_samples(samples):
    check_against_counter(Counts(samples), samples)
    check_against_counter(Counts(samples[::-1]), samples)  # order does not matter
    check_against_counter(Counts(collections.Counter(samples)), samples)  # a mapping
    one_by_one = Counts()
    for symbol in samples:
        one_by_one.add(symbol)
    check_against_counter(one_by_one, samples)


@settings(max_examples=100, deadline=None)
@given(st.lists(numbers_, max_size=30))
def test_numpy_arrays_follow_the_same_rule(samples):
    numeric = [float(x) if isinstance(x, float) else int(x) for x in samples]
    floats = [float(x) for x in numeric]  # what a float64 array holds
    check_against_counter(Counts(np.array(floats, dtype=np.float64)), floats)
    check_against_counter(Counts(floats), floats)
    ints = [x for x in numeric if isinstance(x, int) and -(2**63) <= x < 2**63]
    check_against_counter(Counts(np.array(ints, dtype=np.int64)), ints)
    unsigned = [x for x in numeric if isinstance(x, int) and 0 <= x < 2**64]
    check_against_counter(Counts(np.array(unsigned, dtype=np.uint64)), unsigned)
    # Shards counted on different paths merge into the counts of the whole.
    whole = floats + ints + unsigned
    shards = Counts(np.array(floats)) + Counts(np.array(ints, dtype=np.int64))
    shards += Counts(unsigned)
    check_against_counter(shards, whole)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(symbols, max_size=20), st.lists(symbols, max_size=20), st.lists(symbols, max_size=20)
)
def test_merge_laws(a, b, c):
    A, B, C = Counts(a), Counts(b), Counts(c)
    assert A + B == B + A
    assert (A + B) + C == A + (B + C)
    assert Counts(a + b + c) == A + B + C
    check_against_counter(A + B + C, a + b + c)
    assert A + Counts() == A


def test_random_64_bit_ids_are_all_found():
    rng = random.Random(0)
    ids = [rng.getrandbits(64) for _ in range(1000)]
    c = Counts(ids)
    assert sum(1 for i in ids if i in c) == 1000
    assert all(c[i] == 1 for i in ids)
    assert set(c) == set(ids)
    assert Counts(np.array(ids, dtype=np.uint64)) == c


def test_integers_beyond_float_precision_stay_apart():
    samples = [2**53, 2**53 + 1, 2**63]
    assert len(Counts(samples)) == 3
    shards = Counts([2**53]) + Counts([2**53 + 1]) + Counts([2**63])
    assert len(shards) == 3 and shards == Counts(samples)
    huge = Counts([2**70, 2**70 + 1, -(2**70), 2**70])
    assert huge[2**70] == 2 and huge[2**70 + 1] == 1 and huge[-(2**70)] == 1
    assert 2.0**70 in huge  # equal to 2**70, as a dict finds it


def test_one_and_one_point_zero_are_one_symbol():
    assert as_counter(Counts([1, 1.0])) == {1: 2}
    assert as_counter(Counts([1.0, 1])) == {1: 2}
    assert len(Counts([1]) + Counts([1.0])) == 1
    assert Counts([1]) + Counts([1.0]) == Counts([1, 1])
    assert Counts(np.array([1.0, 2.0])) == Counts(np.array([1, 2]))
    assert Counts([True, 1, np.int8(1), np.float32(1.0)])[1] == 4
    assert Counts([0.0, -0.0, 0])[0] == 3
    assert Counts(np.array([0.5, 0.5, 2**60], dtype=np.float64))[2**60] == 1
    assert Counts([1.5, 1.5])[1.5] == 2
    assert Counts([(1,), (1.0,)])[(1,)] == 2
    assert Counts([1, 2.5]).symbols() == [1, 2.5]
    assert Counts([1.0]).symbols() == [1]  # a number equal to an integer is that int
    assert Counts([Fraction(2), 2, Decimal(2), 2 + 0j, Fraction(1, 2), 0.5]) == Counts(
        [2, 2, 2, 2, 0.5, 0.5]
    )
    with pytest.raises(ValueError, match="samples contain NaN"):
        Counts([Decimal("NaN")])


def test_counts_beyond_int64_are_refused():
    with pytest.raises(ValueError, match="count must be at most 2"):
        Counts().add(1, 2**63)
    with pytest.raises(ValueError, match="count of symbol 1 would be"):
        Counts().add(1, 2**62).add(1, 2**62)
    with pytest.raises(ValueError, match="count of symbol 'a' would be"):
        Counts().add("a", 2**63 - 1).add("a")
    big = Counts().add(3, 2**62)
    with pytest.raises(ValueError, match="count of symbol 3 would be"):
        big + big
    assert Counts().add(1, 2**63 - 1)[1] == 2**63 - 1


# ---------------------------------------------------------------- overflow of counts


@pytest.mark.parametrize("method", METHODS)
def test_totals_beyond_int64(method):
    # Every estimator agrees in the limit of infinitely many samples: the plug-in value.
    for c in (
        np.array([2**62, 2**62]),
        np.array([2**63, 2**63], dtype=np.uint64),
        np.array([2**64 - 1, 2**64 - 1], dtype=np.uint64),
    ):
        assert entropy(c, method=method).value == pytest.approx(math.log(2), rel=1e-12)
    lopsided = entropy(np.array([2**64 - 1, 1], dtype=np.uint64), method=method).value
    assert 0.0 <= lopsided <= 1e-15
    pair = Counts().add("a", 2**62).add("b", 2**62)
    assert entropy(pair, method=method).value == pytest.approx(math.log(2), rel=1e-12)


def test_plugin_of_two_equal_huge_counts_is_log_2():
    assert entropy(np.array([2**62, 2**62]), method="plugin").value == math.log(2)


def test_bootstrap_refuses_more_samples_than_int64():
    with pytest.raises(ValueError, match=r"counts sum to 9\.223e\+18: the bootstrap"):
        entropy_interval(np.array([2**62, 2**62]), method="plugin")
    with pytest.raises(ValueError, match="samples_or_counts sum to"):
        kl_divergence(np.array([2**62, 2**62]), np.array([0.5, 0.5]), method="plugin")
    est = entropy_interval(np.array([2**61, 2**61]), method="plugin", n_boot=5, seed=0)
    assert est.value == pytest.approx(math.log(2), rel=1e-12)
    assert est.low <= est.value <= est.high


def test_held_out_loss_with_huge_counts():
    q = np.array([0.5, 0.25, 0.25])
    est = cross_entropy(np.array([2**62, 2**61, 2**61]), q, base=2)
    assert est.value == pytest.approx(1.5, rel=1e-12)


def test_counts_along_an_axis_bounds_its_table():
    # Largest symbol 2**40: a table indexed by symbol would be 8 TiB; the distinct
    # values are counted instead.
    np.testing.assert_array_equal(counts(np.array([[0, 2**40]]), axis=1), [[1, 1]])
    wide = np.array([[5, 2**40, 5], [2**40, 2**40, 7]])
    np.testing.assert_array_equal(counts(wide, axis=1), [[2, 0, 1], [0, 1, 2]])
    unsigned = np.array([[2**64 - 1, 0, 0]], dtype=np.uint64)
    np.testing.assert_array_equal(counts(unsigned, axis=1), [[2, 1]])
    with pytest.raises(ValueError, match="alphabet_size: counting 1 rows over 1099511627777"):
        counts(np.array([[0, 2**40]]), axis=1, alphabet_size=2**40 + 1)
    # Small symbols still index their column.
    np.testing.assert_array_equal(counts(np.array([[0, 3]]), axis=1), [[1, 0, 0, 1]])


# ---------------------------------------------------------------- the estimators


def jackknife_by_definition(c: list[int]) -> mpmath.mpf:
    """N H - (N - 1)/N sum_j H_(-j), in 60-digit arithmetic (Zahl 1977)."""
    with mpmath.workdps(60):

        def plugin(n: list[int]) -> mpmath.mpf:
            total = mpmath.mpf(sum(n))
            return -mpmath.fsum(k / total * mpmath.log(k / total) for k in n if k)

        N = sum(c)
        loo = mpmath.fsum(
            k * plugin([x - (i == j) for j, x in enumerate(c)]) for i, k in enumerate(c) if k
        )
        return N * plugin(c) - mpmath.mpf(N - 1) / N * loo


@pytest.mark.parametrize(
    "c",
    [[41_000_000_000], [0, 41_000_000_000], [10**15], [10**9, 1], [10**12, 3, 3], [5, 3, 1]],
    ids=str,
)
def test_jackknife_is_exact_for_large_counts(c):
    got = entropy(np.array(c), method="jackknife").value
    expected = float(jackknife_by_definition(c))
    assert got >= 0.0
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_one_symbol_seen_often_has_entropy_zero():
    # Every method but Grassberger's (whose G(n) for one symbol is not log n) gives
    # exactly 0 for a single symbol; a rounding below it would be the jackknife's -1e-4.
    for method in set(METHODS) - {"grassberger"}:
        for n in (2, 3, 41_000_000_000, 10**15):
            value = entropy(np.array([n]), method=method).value
            assert value == 0.0 and math.copysign(1.0, value) == 1.0, (method, n)
    for n in (2, 3, 4, 41_000_000_000, 10**15):
        assert entropy(np.array([n]), method="grassberger").value >= 0.0


def test_grassberger_of_one_symbol_seen_twice_is_not_negative():
    # Eq. 35 gives log 2 - G(2) = -0.036; clipped to the bound that holds.
    assert entropy(np.array([2]), method="grassberger").value == 0.0
    assert entropy(np.array([2, 0, 0]), method="grassberger").value == 0.0


@pytest.mark.parametrize("method", ["chao_shen", "shrinkage", "plugin", "zhang", "jackknife"])
def test_zero_is_positive_zero(method):
    for c in ([5], [3, 0], [[4], [1]]):
        value = np.atleast_1d(entropy(np.array(c), method=method).value)
        assert np.all(np.copysign(1.0, value) == 1.0), (method, c)


def test_kl_interval_of_an_infinite_divergence():
    # A sample in a class q gives probability 0: D(P || q) is +inf for certain.
    est = kl_divergence(np.array([3, 1]), np.array([1.0, 0.0]), method="plugin", seed=0)
    assert est.value == math.inf and est.low == math.inf and est.high == math.inf
    labels = Labels(np.array([[0, 1], [0, 0]]))
    batch = kl_divergence(labels, np.array([1.0, 0.0]), method="plugin", n_boot=10, seed=0)
    assert batch.low[0] == math.inf and np.isfinite(batch.low[1])


DEGENERATE = [
    [1],
    [0, 1],
    [1, 1],
    [10**15],
    [10**15, 1],
    [0, 0, 10**15, 0],
    np.array([1e15, 3.0]),
    np.array([2.0, 0.0]),
    np.array([True, False]),
    np.array([2**62, 2**62, 1]),
]


@pytest.mark.parametrize("method", ["auto", *METHODS])
@pytest.mark.parametrize("c", DEGENERATE, ids=str)
def test_degenerate_input_gives_a_finite_non_negative_number(method, c):
    value = entropy(np.asarray(c), method=method).value
    assert np.isfinite(value) and value >= 0 and math.copysign(1.0, value) == 1.0


@pytest.mark.parametrize("method", ["auto", *METHODS])
def test_degenerate_input_is_refused_by_name(method):
    with pytest.raises(ValueError, match="counts sum to 0"):
        entropy(np.array([0, 0]), method=method)
    with pytest.raises(ValueError, match="counts must be whole numbers"):
        entropy(np.array([1.5, 2.0]), method=method)
    with pytest.raises(ValueError, match="counts are too large to be exact counts"):
        entropy(np.array([1e17, 1.0]), method=method)


# ---------------------------------------------------------------- properties

small_or_huge = st.one_of(st.integers(0, 30), st.integers(0, 2**62))
count_vectors = arrays(np.int64, st.integers(1, 8), elements=small_or_huge).filter(
    lambda c: c.sum(dtype=np.float64) > 0
)


@settings(max_examples=60, deadline=None)
@given(count_vectors, st.randoms(use_true_random=False))
def test_every_estimate_is_finite_non_negative_and_symmetric(c, random_):
    order = list(range(c.size))
    random_.shuffle(order)
    K = c.size
    observed = int(np.count_nonzero(c))
    for method in METHODS:
        value = entropy(c, method=method).value
        assert np.isfinite(value) and value >= 0, method
        assert math.copysign(1.0, value) == 1.0, method
        permuted = entropy(c[order], method=method).value
        assert permuted == pytest.approx(value, rel=1e-9, abs=1e-12), method
        if method in ("shrinkage", "nsb"):  # on the K-symbol simplex
            assert value <= math.log(K) + 1e-9, method
    plugin = entropy(c, method="plugin").value
    assert plugin <= math.log(observed) + 1e-12
    assert plugin <= math.log(K) + 1e-12


@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, st.integers(1, 5), elements=st.integers(0, 6)).filter(lambda c: c.sum()))
def test_jackknife_matches_its_definition(c):
    got = entropy(c, method="jackknife").value
    assert got == pytest.approx(float(jackknife_by_definition(c.tolist())), rel=1e-10, abs=1e-13)
