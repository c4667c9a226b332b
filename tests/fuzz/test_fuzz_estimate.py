"""Property fuzzing of crossentropy.estimate: Counts against collections.Counter, and
every entropy method on degenerate and huge counts (finite, >= 0).  Profiles: conftest.py.
"""

from __future__ import annotations

import collections
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from crossentropy.estimate import METHODS, Counts, counts, entropy

symbols = st.one_of(st.integers(-3, 5), st.sampled_from(["a", "b", 1.0, 2.0, True]))


@given(a=st.lists(symbols, max_size=20), b=st.lists(symbols, max_size=20))
def test_counts_merge_matches_counter(a, b):
    ca, cb = Counts(a), Counts(b)
    ref = collections.Counter(a) + collections.Counter(b)  # 1 == 1.0 == True: one symbol
    merged = ca + cb
    assert dict(merged) == dict(ref)
    assert merged.total == sum(ref.values())  # a property, as in the Counts docstring
    assert ca + cb == cb + ca
    assert (ca + cb) + Counts([]) == ca + cb
    assert ca.copy().merge(cb) == merged


@given(values=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=10))
def test_counts_of_large_integers(values):
    c = counts(np.array(values, dtype=np.uint64))
    assert dict(c) == dict(collections.Counter(values))


degenerate = st.one_of(
    st.lists(st.integers(0, 3), min_size=1, max_size=6),
    st.lists(st.integers(0, 10**15), min_size=1, max_size=4),
    st.just([1]),
    st.just([2]),
    st.just([0, 0, 5]),
    st.just([10**18, 1]),
)


@given(c=degenerate, method=st.sampled_from(METHODS))
def test_every_method_finite_and_non_negative(c, method):
    arr = np.array(c, dtype=np.int64)
    try:
        est = entropy(arr, method=method)
    except (ValueError, TypeError):
        assert arr.sum() == 0 or method in ("nsb",)  # no samples: a clean refusal
        return
    v = float(est.value)
    assert math.isfinite(v), (c, method, v)
    assert v >= 0 and math.copysign(1.0, v) == 1.0, (c, method, v)
