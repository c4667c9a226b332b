"""Hypothesis properties of the estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import crossentropy as ce
from crossentropy.estimate import METHODS, entropy, entropy_interval

count_vectors = arrays(np.int64, st.integers(1, 12), elements=st.integers(0, 30)).filter(
    lambda c: c.sum() > 0
)


@settings(max_examples=40, deadline=None)
@given(count_vectors, st.randoms(use_true_random=False))
def test_invariant_to_permuting_symbols(c, random):
    order = list(range(c.size))
    random.shuffle(order)
    for method in METHODS:
        a = entropy(c, method=method).value
        b = entropy(c[order], method=method).value
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), method


@settings(max_examples=60, deadline=None)
@given(count_vectors)
def test_plugin_is_the_entropy_of_the_frequencies(c):
    expected = float(ce.entropy(c / c.sum()))
    assert entropy(c, method="plugin").value == pytest.approx(expected, rel=1e-12, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(count_vectors)
def test_orderings_and_ranges(c):
    plugin = entropy(c, method="plugin").value
    K = c.size
    assert entropy(c, method="miller_madow").value >= plugin - 1e-12
    assert entropy(c, method="chao_shen").value >= plugin - 1e-12
    for method in ("shrinkage", "nsb"):  # both live on the K-symbol simplex
        value = entropy(c, method=method).value
        assert -1e-12 <= value <= math.log(K) + 1e-9
    for method in METHODS:
        assert np.isfinite(entropy(c, method=method).value)


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 8)), elements=st.integers(1, 20))
)
def test_batch_equals_row_by_row(c):
    for method in ("auto", *METHODS):
        batched = entropy(c, method=method)
        for row in range(c.shape[0]):
            single = entropy(c[row], method=method)
            assert batched.value[row] == pytest.approx(single.value, rel=1e-10, abs=1e-13)


@settings(max_examples=15, deadline=None)
@given(count_vectors, st.integers(0, 2**32 - 1))
def test_bootstrap_is_reproducible(c, seed):
    a = entropy_interval(c, method="miller_madow", n_boot=50, seed=seed)
    b = entropy_interval(c, method="miller_madow", n_boot=50, seed=np.random.default_rng(seed))
    assert (a.low, a.high) == (b.low, b.high)
    assert 0 <= a.low <= a.high
