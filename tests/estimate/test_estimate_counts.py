"""Counting: Counts from hashables, integer and string arrays; merging; counts(axis=...)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.estimate import Counts, counts, entropy

symbols = st.one_of(
    st.integers(min_value=-5, max_value=40),
    st.integers(min_value=2**40, max_value=2**40 + 3),
    st.sampled_from(["a", "b", "the", ""]),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(symbols, max_size=40), st.lists(symbols, max_size=40))
def test_merge_equals_counting_the_concatenation(a, b):
    whole = Counts(a + b)
    assert Counts(a) + Counts(b) == whole
    assert Counts(a).merge(Counts(b)) == whole
    grown = Counts(a)
    grown += Counts(b)
    assert grown == whole
    assert dict(whole.items()) == dict(collections.Counter(a + b))
    assert whole.total == len(a) + len(b)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200), st.integers(1, 5))
def test_batches_of_integer_arrays(samples, pieces):
    array = np.array(samples)
    accumulator = Counts()
    for batch in np.array_split(array, pieces):
        accumulator.update(batch)
    expected = np.bincount(array)
    assert accumulator == Counts(samples)
    np.testing.assert_array_equal(accumulator.to_array(), expected[expected > 0])
    sized = Counts(array, alphabet_size=301).to_array()
    np.testing.assert_array_equal(sized, np.bincount(array, minlength=301))


def test_integer_array_matches_bincount_and_unique():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, size=100_000)
    c = Counts(x)
    np.testing.assert_array_equal(c.to_array(), np.bincount(x)[np.bincount(x) > 0])
    assert c[7] == int(np.sum(x == 7))
    negative = x - 500
    values, numbers = np.unique(negative, return_counts=True)
    n = Counts(negative)
    assert [n[v] for v in values.tolist()] == numbers.tolist()
    for dtype in (np.int8, np.uint16, np.int32, np.uint64, np.bool_):
        small = (x % 2).astype(dtype)
        assert Counts(small) == Counts((x % 2).tolist())


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]
)
def test_blocked_counting_of_every_integer_dtype(dtype):
    # Over a million samples: several counting blocks. The odd symbols sit in a later
    # block than the first, so the blocks before them are counted densely and the rest
    # takes the general path; the totals must not care. Reference: collections.Counter.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 100, size=1_100_003).astype(dtype)
    strided = x[::3]
    for array in (x, strided):
        expected = np.bincount(array.astype(np.int64))
        np.testing.assert_array_equal(Counts(array).to_array(), expected[expected > 0])
    top = np.iinfo(dtype).max  # 255 for uint8: dense; 2**63 - 1 for int64: the dictionary
    x[900_000] = top
    if np.issubdtype(dtype, np.signedinteger):
        x[[700_000, 700_001]] = [-1, np.iinfo(dtype).min]
    assert Counts(x) == Counts(collections.Counter(x.tolist()))


def test_strings():
    words = np.array(["the", "cat", "sat", "on", "the", "mat", "the", "end"])
    c = Counts(words)
    assert c["the"] == 3 and c["cat"] == 1 and len(c) == 6
    assert c == Counts(words.tolist())
    assert c.symbols() == sorted(set(words.tolist()))
    with pytest.raises(KeyError):
        c["dog"]
    assert "dog" not in c and "cat" in c


def test_add_copy_and_repr():
    c = Counts().add("x").add("x", 2).add(3)
    assert c["x"] == 3 and c[3] == 1 and c.total == 4
    d = c.copy()
    d.add("y")
    assert "y" not in c
    assert repr(Counts([1, 1, 2])) == "Counts({1: 2, 2: 1}, total=3)"
    assert np.asarray(Counts([1, 1, 2])).tolist() == [2, 1]


def test_mixed_symbols_keep_types_apart():
    c = Counts([1, "1", (1,), 1])
    assert c[1] == 2 and c["1"] == 1 and c[(1,)] == 1


def test_counts_function():
    x = np.array([[0, 1, 1, 4], [2, 2, 2, 2]])
    np.testing.assert_array_equal(counts(x, axis=1), [[1, 2, 0, 0, 1], [0, 0, 4, 0, 0]])
    np.testing.assert_array_equal(counts(x.T, axis=0), counts(x, axis=1))
    np.testing.assert_array_equal(counts(x, axis=-1, alphabet_size=6)[0], [1, 2, 0, 0, 1, 0])
    s = np.array([["b", "a"], ["c", "c"]])
    np.testing.assert_array_equal(counts(s, axis=1), [[1, 1, 0], [0, 0, 2]])
    assert isinstance(counts([1, 2, 2]), Counts)
    three_d = np.random.default_rng(1).integers(0, 5, size=(2, 3, 50))
    batched = counts(three_d, axis=-1, alphabet_size=5)
    assert batched.shape == (2, 3, 5)
    np.testing.assert_array_equal(batched[1, 2], np.bincount(three_d[1, 2], minlength=5))


def test_counts_feed_the_estimators():
    x = np.random.default_rng(2).integers(0, 8, size=(4, 200))
    batched = entropy(counts(x, axis=1), method="miller_madow").value
    for row in range(4):
        single = entropy(counts(x[row]), method="miller_madow").value
        assert batched[row] == pytest.approx(single, rel=1e-13)


def test_counting_errors():
    with pytest.raises(ValueError, match="samples contain NaN"):
        Counts(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="samples contain NaN"):
        Counts([float("nan"), (1,)])
    with pytest.raises(ValueError, match="single string"):
        Counts("hello")
    with pytest.raises(ValueError, match="samples must be hashable"):
        Counts([[1], 2, "x"])
    with pytest.raises(ValueError, match="count must be a non-negative integer"):
        Counts().add("a", -1)
    with pytest.raises(ValueError, match="alphabet_size must be a positive integer"):
        Counts([1], alphabet_size=0)
    with pytest.raises(ValueError, match="alphabet_size 2 is smaller than the 3 distinct"):
        Counts(["a", "b", "c"], alphabet_size=2).to_array()
    with pytest.raises(ValueError, match="cannot merge Counts over alphabets of different"):
        Counts([1], alphabet_size=3) + Counts([1], alphabet_size=4)
    with pytest.raises(TypeError, match="other must be a Counts"):
        Counts([1]).merge([1])
    with pytest.raises(ValueError, match="samples are empty along axis"):
        counts(np.zeros((3, 0), dtype=int), axis=1)
    with pytest.raises(ValueError, match="alphabet_size 2 is smaller than the 5 symbols"):
        counts(np.array([[0, 4]]), axis=1, alphabet_size=2)
    with pytest.raises(ValueError, match="samples must have at least one axis"):
        counts(np.int64(3), axis=0)
    with pytest.raises(ValueError, match="samples contain NaN"):
        counts(np.array([[0.5, np.nan]]), axis=1)
    with pytest.raises(ValueError, match="out of range"):
        counts(np.array([[0, 1]]), axis=2)
