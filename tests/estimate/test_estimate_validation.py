"""Bad input raises ValueError (or TypeError) naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from crossentropy import Labels
from crossentropy.estimate import (
    Counts,
    conditional_entropy,
    cross_entropy,
    entropy,
    entropy_interval,
    kl_divergence,
    mutual_information,
)

BAD_COUNTS = [
    (np.array([3, -1, 2]), r"counts contain a negative value -1 at index \(1,\)"),
    (np.array([3.0, 1.5]), r"counts must be whole numbers: found 1.5 at index \(1,\)"),
    (np.array([3.0, np.nan]), r"counts contain NaN at index \(1,\)"),
    (np.array([3.0, np.inf]), r"counts contain an infinite value at index \(1,\)"),
    (np.array([], dtype=int), r"counts is empty \(shape \(0,\)\)"),
    (np.zeros((2, 0), dtype=int), r"counts is empty \(shape \(2, 0\)\)"),
    (np.array([0, 0, 0]), "counts sum to 0: an estimate needs at least one sample"),
    (np.array([[1, 2], [0, 0]]), r"counts sum to 0 in row \(1,\)"),
    (np.int64(4), "counts must have at least one axis"),
    (np.array(["a", "b"]), "counts must be an array of whole-number counts, got dtype <U1"),
    ([[1, 2], [3]], "counts must be an array of counts"),
    (Counts(), "counts is empty: no samples have been counted"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_COUNTS)
@pytest.mark.parametrize("function", [entropy, entropy_interval])
def test_bad_counts(function, bad, message):
    with pytest.raises(ValueError, match=message):
        function(bad, method="plugin")


@pytest.mark.parametrize("function", [entropy, entropy_interval])
def test_unknown_method(function):
    with pytest.raises(ValueError, match=r"method must be one of 'auto', 'plugin'.*got 'mle'"):
        function([1, 2], method="mle")


def test_other_arguments():
    with pytest.raises(ValueError, match="level must be a number strictly between 0 and 1"):
        entropy_interval([1, 2], level=1.0)
    with pytest.raises(ValueError, match="n_boot must be a positive integer, got 0"):
        entropy_interval([1, 2], n_boot=0)
    with pytest.raises(ValueError, match="seed must be None, an integer or a numpy Generator"):
        entropy_interval([1, 2], method="plugin", seed="x")
    with pytest.raises(ValueError, match="base must be a number > 1, got 1"):
        entropy([1, 2], base=1)
    with pytest.raises(TypeError, match="base must be a number > 1 or None, got 'e'"):
        entropy([1, 2], base="e")


def test_cross_entropy_and_kl_arguments():
    q = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match=r"samples_or_counts has 3 classes .* but q has 2"):
        cross_entropy(np.array([1, 2, 3]), q)
    with pytest.raises(ValueError, match="samples_or_counts contain a negative value"):
        cross_entropy(np.array([1, -2]), q)
    with pytest.raises(ValueError, match=r"samples_or_counts \(labels\) must lie in \[0, 2\)"):
        cross_entropy(Labels(np.array([0, 2])), q)
    with pytest.raises(ValueError, match="samples_or_counts is empty: there are no samples"):
        cross_entropy(Labels(np.array([], dtype=int)), q)
    with pytest.raises(TypeError, match="samples_or_counts labels must be integers"):
        cross_entropy(Labels(np.array([0.0, 1.0])), q)
    with pytest.raises(ValueError, match="samples_or_counts counts symbol 'a', which is not"):
        cross_entropy(Counts(["a"]), q)
    with pytest.raises(ValueError, match="samples_or_counts is empty: no samples"):
        cross_entropy(Counts(), q)
    with pytest.raises(ValueError, match="q does not sum to 1"):
        cross_entropy(np.array([1, 2]), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"q \(probabilities\) contain NaN"):
        cross_entropy(np.array([1, 2]), np.array([0.5, np.nan]))
    with pytest.raises(TypeError, match=r"q \(probabilities\) must be a floating-point array"):
        cross_entropy(np.array([1, 2]), np.array([1, 0]))
    with pytest.raises(TypeError, match="q cannot be Labels"):
        cross_entropy(np.array([1, 2]), Labels(np.array([0])))
    with pytest.raises(ValueError, match="q must have a non-empty class axis"):
        cross_entropy(np.array([1, 2]), np.array(1.0))
    with pytest.raises(ValueError, match="method must be one of"):
        kl_divergence(np.array([1, 2]), q, method="nope")
    with pytest.raises(ValueError, match="level must be a number strictly between"):
        cross_entropy(np.array([1, 2]), q, level=0)


@pytest.mark.parametrize("function", [conditional_entropy, mutual_information])
def test_paired_sample_arguments(function):
    with pytest.raises(
        ValueError, match="x and y must be paired samples of the same length: got 3 and 2"
    ):
        function([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="x is empty"):
        function([], [])
    with pytest.raises(ValueError, match="y is empty"):
        function([1], np.array([]))
    with pytest.raises(ValueError, match="y contain NaN"):
        function([1, 2], np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="x must be a sequence of samples, got a single string"):
        function("ab", [1, 2])
    with pytest.raises(ValueError, match="x must be one-dimensional"):
        function(np.zeros((2, 2)), [1, 2])
    with pytest.raises(ValueError, match="y must be a sequence of hashable samples"):
        function([1, 2], [[1], [2]])
    with pytest.raises(ValueError, match="method must be one of"):
        function([1, 2], [1, 2], method="bogus")


def test_model_checks():
    from crossentropy import Logits, LogProbs

    c = np.array([1, 2])
    with pytest.raises(ValueError, match=r"q \(probabilities\) contain a negative value -0.5"):
        cross_entropy(c, np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match=r"q \(probabilities\) contain \+inf at index \(1,\)"):
        cross_entropy(c, np.array([0.5, np.inf]))
    with pytest.raises(ValueError, match=r"q does not sum to 1 .* the sum is 0.9 in row \(1,\)"):
        cross_entropy(c, np.array([[0.5, 0.5], [0.5, 0.4]]))
    with pytest.raises(ValueError, match=r"q \(logits\) are -inf everywhere in row \(0,\)"):
        cross_entropy(c, Logits(np.array([[-np.inf, -np.inf]])))
    with pytest.raises(ValueError, match=r"q \(log-probabilities\) contain NaN"):
        cross_entropy(c, LogProbs(np.array([np.nan, 0.0])))
    with pytest.raises(ValueError, match="q does not sum to 1 along its last axis: the sum is 2"):
        cross_entropy(c, LogProbs(np.array([0.0, 0.0])))


# Every estimator that takes ``base``, called on valid data: only ``base`` is wrong.
_Q = np.array([0.5, 0.5])
BASE_CALLS = {
    "entropy": lambda base: entropy([1, 2], method="plugin", base=base),
    "entropy_interval": lambda base: entropy_interval(
        [1, 2], method="plugin", n_boot=2, seed=0, base=base
    ),
    "cross_entropy": lambda base: cross_entropy(np.array([1, 2]), _Q, base=base),
    "kl_divergence": lambda base: kl_divergence(
        np.array([1, 2]), _Q, method="plugin", n_boot=2, seed=0, base=base
    ),
    "conditional_entropy": lambda base: conditional_entropy(
        [0, 1, 1], [0, 0, 1], method="plugin", base=base
    ),
    "mutual_information": lambda base: mutual_information(
        [0, 1, 1], [0, 0, 1], method="plugin", base=base
    ),
}


@pytest.mark.parametrize("call", BASE_CALLS.values(), ids=BASE_CALLS.keys())
@pytest.mark.parametrize(
    ("base", "shown"),
    [
        (0.5, "0.5"),
        (0.999, "0.999"),
        (1, "1"),
        (1.0, "1.0"),
        (0, "0"),
        (-2, "-2"),
        (np.nan, "nan"),
        (np.inf, "inf"),
        (np.float32(0.5), ""),
    ],
)
def test_base_must_exceed_one(call, base, shown):
    # As the measures and the CLI (check_measure_base): a base in (0, 1) has a negative
    # logarithm, which would flip the sign of every estimate (a negative KL divergence).
    with pytest.raises(ValueError, match=f"base must be a number > 1, got .*{shown}"):
        call(base)


@pytest.mark.parametrize("call", BASE_CALLS.values(), ids=BASE_CALLS.keys())
@pytest.mark.parametrize("base", ["e", True, np.bool_(True), 2j, [2]])
def test_base_must_be_a_real_number(call, base):
    with pytest.raises(TypeError, match="base must be a number > 1 or None"):
        call(base)


@pytest.mark.parametrize("call", BASE_CALLS.values(), ids=BASE_CALLS.keys())
def test_base_above_one_is_accepted(call):
    # Any finite base > 1 rescales nats by 1 / log(base), even one just above 1.
    nats = call(None).value
    for base in (2, 1.5, np.float32(10.0), 1 + 1e-9):
        assert call(base).value == pytest.approx(nats / np.log(float(base)), rel=1e-9)
