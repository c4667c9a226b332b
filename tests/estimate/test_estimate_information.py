"""Held-out cross-entropy, KL, conditional entropy, mutual information; intervals."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

import crossentropy as ce
from crossentropy import Labels, Logits, LogProbs
from crossentropy.estimate import (
    Counts,
    conditional_entropy,
    cross_entropy,
    entropy,
    entropy_interval,
    kl_divergence,
    mutual_information,
)

Q = np.array([0.5, 0.2, 0.2, 0.1])
SAMPLES = [0, 0, 1, 3, 0, 2, 2, 0, 1, 0]


def test_cross_entropy_by_hand():
    losses = [-math.log(Q[x]) for x in SAMPLES]
    est = cross_entropy(Labels(np.array(SAMPLES)), Q, level=0.9)
    assert est.method == "held_out"
    assert est.value == pytest.approx(statistics.fmean(losses), rel=1e-13)
    se = statistics.stdev(losses) / math.sqrt(len(losses))
    assert est.std_error == pytest.approx(se, rel=1e-12)
    assert est.low == pytest.approx(est.value - 1.6448536269514722 * se)
    assert est.high == pytest.approx(est.value + 1.6448536269514722 * se)
    c = np.bincount(SAMPLES, minlength=4)
    for same in (c, Counts(SAMPLES), Counts(SAMPLES, alphabet_size=4)):
        assert cross_entropy(same, Q).value == pytest.approx(est.value, rel=1e-13)
    assert cross_entropy(c, LogProbs(np.log(Q))).value == pytest.approx(est.value)
    assert cross_entropy(c, Logits(np.log(Q) + 3.0)).value == pytest.approx(est.value)
    assert cross_entropy(c, Q, base=2).value == pytest.approx(est.value / math.log(2))


def test_cross_entropy_edges_and_batches():
    est = cross_entropy(np.array([1, 0, 0, 1]), np.array([0.5, 0.5, 0.0, 0.0]))
    assert est.value == math.inf and est.std_error == math.inf
    # q = 0 where no sample fell costs nothing.
    assert cross_entropy(np.array([2, 2, 0, 0]), np.array([0.5, 0.5, 0, 0])).value == (
        pytest.approx(math.log(2))
    )
    batch = np.array([[3, 1, 0, 0], [0, 0, 2, 2]])
    got = cross_entropy(batch, Q).value
    assert got.shape == (2,)
    assert got[1] == pytest.approx(cross_entropy(batch[1], Q).value)
    labels = np.array([[0, 0, 1], [2, 3, 3]])
    np.testing.assert_allclose(
        cross_entropy(Labels(labels), Q).value,
        [-(2 * math.log(0.5) + math.log(0.2)) / 3, -(math.log(0.2) + 2 * math.log(0.1)) / 3],
    )


def test_cross_entropy_is_unbiased():
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    draws = rng.multinomial(20, p, size=4000)
    est = cross_entropy(draws, Q)
    truth = float(ce.cross_entropy(p, Q))
    spread = est.value.std() / math.sqrt(draws.shape[0])
    assert abs(est.value.mean() - truth) < 4 * spread
    # The standard errors are honest: their mean square is the sampling variance.
    assert np.mean(est.std_error**2) == pytest.approx(est.value.var(), rel=0.1)


def test_kl_divergence():
    c = np.array([40, 25, 20, 15])
    for method in ("plugin", "miller_madow", "nsb"):
        est = kl_divergence(c, Q, method=method, n_boot=300, seed=1)
        expected = cross_entropy(c, Q).value - entropy(c, method=method).value
        assert est.value == pytest.approx(expected, rel=1e-12)
        assert est.method == method
        assert est.low < est.value < est.high
        again = kl_divergence(c, Q, method=method, n_boot=300, seed=1)
        assert (again.low, again.high) == (est.low, est.high)
    plugin = kl_divergence(c, Q, method="plugin", n_boot=10, seed=0).value
    assert plugin == pytest.approx(float(ce.kl_divergence(c / c.sum(), Q)), rel=1e-12)
    assert kl_divergence(c, Q, n_boot=10, seed=0).method == "miller_madow"  # well sampled
    batch = kl_divergence(np.stack([c, c[::-1]]), Q, method="plugin", n_boot=20, seed=0)
    assert batch.value.shape == (2,)


def test_conditional_entropy_by_hand():
    x = ["u", "u", "u", "v", "v", "w", "w", "w", "w"]
    y = [0, 1, 1, 2, 2, 0, 1, 2, 3]
    contexts = {"u": [1, 2], "v": [2], "w": [1, 1, 1, 1]}  # counts of y within each x

    def plugin(c):
        n = sum(c)
        return -sum(k / n * math.log(k / n) for k in c if k)

    plug = sum(sum(c) / 9 * plugin(c) for c in contexts.values())
    mm = sum(sum(c) / 9 * (plugin(c) + (len(c) - 1) / (2 * sum(c))) for c in contexts.values())
    assert conditional_entropy(x, y, method="plugin").value == pytest.approx(plug, rel=1e-13)
    assert conditional_entropy(x, y, method="miller_madow").value == pytest.approx(mm)
    # Chain rule for the plug-in estimate: H(Y|X) = H(X, Y) - H(X).
    joint = plugin([1, 2, 2, 1, 1, 1, 1])
    assert plug == pytest.approx(joint - plugin([3, 2, 4]))
    y_marginal = plugin([2, 3, 3, 1])
    mi = mutual_information(x, y, method="plugin")
    assert mi.value == pytest.approx(y_marginal - plug)
    assert mi.method == "plugin"
    assert conditional_entropy(np.array(x), np.array(y), method="plugin").value == (
        pytest.approx(plug)
    )
    # Hashable samples of any kind.
    pairs = [(a, b) for a, b in zip(x, y, strict=True)]
    assert conditional_entropy(pairs, y, method="plugin").value == pytest.approx(0.0, abs=1e-15)


def test_mutual_information_bias_correction():
    # Independent x and y: the true I is 0; the plug-in is biased up by about
    # (Kx - 1)(Ky - 1) / 2N = 0.2 nats, the corrected estimates much less.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(50, 200))
    y = rng.integers(0, 6, size=(50, 200))

    def mean_mi(method):
        return np.mean(
            [mutual_information(a, b, method=method).value for a, b in zip(x, y, strict=True)]
        )

    plug = mean_mi("plugin")
    assert plug == pytest.approx(0.05, abs=0.01)
    assert abs(mean_mi("miller_madow")) < plug / 3
    assert abs(mean_mi("jackknife")) < plug / 3
    assert mutual_information(x[0], y[0]).method in ("nsb", "miller_madow")


def test_bootstrap_interval_coverage_well_sampled():
    # Zipf over 10 symbols, N = 500: 200 seeded data sets, 300 resamples each. The
    # binomial sd of an observed 95% coverage over 200 data sets is 0.015.
    rng = np.random.default_rng(7)
    p = 1 / np.arange(1, 11)
    p /= p.sum()
    truth = float(ce.entropy(p))
    c = rng.multinomial(500, p, size=200)
    est = entropy_interval(c, method="miller_madow", n_boot=300, seed=11)
    covered = np.mean((est.low <= truth) & (truth <= est.high))
    assert 0.88 <= covered <= 1.0
    assert np.all(est.low <= est.value) and np.all(est.value <= est.high)
