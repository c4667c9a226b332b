"""Each estimator against its formula, computed here independently by hand.

The reference implementations below are deliberately plain: Python loops over symbols
and samples, ``math`` and ``scipy.special.digamma``, the formula as the paper writes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import digamma

from crossentropy.estimate import METHODS, Counts, entropy

HAND_MADE = [
    [4, 2, 1, 1, 0],
    [3, 3, 1, 0, 0, 2],
    [1, 1, 1],
    [7],
    [10, 0, 0, 1],
    [5, 4, 3, 2, 1, 1, 1, 0, 0, 0],
    [2, 2],
]


def by_hand_plugin(c):
    N = sum(c)
    return -sum(n / N * math.log(n / N) for n in c if n)


def by_hand_miller_madow(c):
    m = sum(1 for n in c if n)
    return by_hand_plugin(c) + (m - 1) / (2 * sum(c))


def by_hand_jackknife(c):
    # Leave every single sample out in turn (Zahl 1977).
    samples = [i for i, n in enumerate(c) for _ in range(n)]
    N = len(samples)
    if N == 1:
        return 0.0
    loo = []
    for j in range(N):
        rest = samples[:j] + samples[j + 1 :]
        loo.append(by_hand_plugin([rest.count(i) for i in range(len(c))]))
    return N * by_hand_plugin(c) - (N - 1) / N * sum(loo)


def by_hand_grassberger(c):
    # Grassberger (2003), arXiv:physics/0307138, eq. 35.
    N = sum(c)
    total = 0.0
    for n in c:
        if n:
            G = digamma(n) + 0.5 * (-1) ** n * (digamma((n + 1) / 2) - digamma(n / 2))
            total += n * G
    return math.log(N) - total / N


def by_hand_chao_shen(c):
    # Chao & Shen (2003): coverage-adjusted Horvitz-Thompson.
    N = sum(c)
    f1 = sum(1 for n in c if n == 1)
    if f1 == N:
        f1 = N - 1
    C = 1 - f1 / N
    total = 0.0
    for n in c:
        if n:
            pa = C * n / N
            total -= pa * math.log(pa) / (1 - (1 - pa) ** N)
    return total


def by_hand_shrinkage(c):
    # Hausser & Strimmer (2009), JMLR 10, eqs. 5 and 8; target 1/K.
    N, K = sum(c), len(c)
    u = [n / N for n in c]
    spread = sum((1 / K - x) ** 2 for x in u)
    lam = 1.0 if N == 1 or spread == 0 else (1 - sum(x * x for x in u)) / ((N - 1) * spread)
    lam = min(1.0, max(0.0, lam))
    p = [lam / K + (1 - lam) * x for x in u]
    return -sum(x * math.log(x) for x in p if x > 0)


def by_hand_zhang(c):
    # Zhang (2012), Neural Computation 24, eq. 9, as written (no closed form).
    N = sum(c)
    total = 0.0
    for v in range(1, N):
        factor = N ** (v + 1) * math.factorial(N - v - 1) / math.factorial(N)
        inner = 0.0
        for n in c:
            p = n / N
            prod = 1.0
            for j in range(v):
                prod *= 1 - p - j / N
            inner += p * prod
        total += factor * inner / v
    return total


BY_HAND = {
    "plugin": by_hand_plugin,
    "miller_madow": by_hand_miller_madow,
    "jackknife": by_hand_jackknife,
    "grassberger": by_hand_grassberger,
    "chao_shen": by_hand_chao_shen,
    "shrinkage": by_hand_shrinkage,
    "zhang": by_hand_zhang,
}


@pytest.mark.parametrize("method", sorted(BY_HAND))
@pytest.mark.parametrize("c", HAND_MADE, ids=str)
def test_against_formula_by_hand(method, c):
    got = entropy(np.array(c), method=method)
    assert got.method == method
    assert got.std_error is None
    assert got.value == pytest.approx(BY_HAND[method](c), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", sorted(BY_HAND))
def test_batch_equals_rows(method):
    rows = np.array([[4, 2, 1, 1, 0], [0, 0, 1, 1, 8], [3, 3, 3, 3, 3], [1, 0, 0, 0, 0]])
    batched = entropy(rows.reshape(2, 2, 5), method=method).value
    assert batched.shape == (2, 2)
    for index in np.ndindex(2, 2):
        expected = BY_HAND[method](rows.reshape(2, 2, 5)[index].tolist())
        assert batched[index] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_known_closed_forms():
    # Every symbol seen equally often: plug-in is log m exactly.
    assert entropy([5, 5, 5, 5], method="plugin").value == pytest.approx(math.log(4))
    # One symbol: no uncertainty, and every frequentist correction agrees.
    for method in ("plugin", "miller_madow", "jackknife", "chao_shen", "zhang"):
        assert entropy([9], method=method).value == pytest.approx(0.0, abs=1e-13)
    # Zhang's series equals psi(N) - (1/N) sum n psi(n) (Schurmann 2015).
    assert entropy([3, 1, 6], method="zhang").value == pytest.approx(
        digamma(10) - (3 * digamma(3) + digamma(1) + 6 * digamma(6)) / 10
    )


@pytest.mark.parametrize("method", METHODS)
def test_base(method):
    c = np.array([6, 3, 2, 1, 0, 0])
    nats = entropy(c, method=method)
    bits = entropy(c, method=method, base=2)
    assert bits.value == pytest.approx(nats.value / math.log(2), rel=1e-12)
    if nats.std_error is not None:
        assert bits.std_error == pytest.approx(nats.std_error / math.log(2), rel=1e-12)


def test_zeros_only_matter_where_K_does():
    c = np.array([6, 3, 2, 1])
    padded = np.pad(c, (0, 20))
    for method in ("plugin", "miller_madow", "jackknife", "grassberger", "chao_shen", "zhang"):
        assert entropy(padded, method=method).value == pytest.approx(
            entropy(c, method=method).value, rel=1e-13
        )
    for method in ("shrinkage", "nsb"):  # these depend on the alphabet size K
        assert entropy(padded, method=method).value > entropy(c, method=method).value


def test_counts_object_is_accepted():
    c = Counts(["a", "b", "a", "c", "a"])
    assert entropy(c, method="plugin").value == pytest.approx(by_hand_plugin([3, 1, 1]))
    sized = Counts([0, 0, 1], alphabet_size=10)
    assert entropy(sized, method="shrinkage").value == pytest.approx(
        by_hand_shrinkage([2, 1] + [0] * 8)
    )


def test_auto_says_what_it_chose():
    well = np.array([500, 300, 200])
    under = np.pad([3, 2, 1, 1, 1], (0, 95))
    assert entropy(well).method == "miller_madow"
    assert entropy(well).value == entropy(well, method="miller_madow").value
    assert entropy(under).method == "nsb"
    assert entropy(under).std_error is not None
    # A Counts with no alphabet size cannot run NSB: Chao-Shen needs no K.
    assert entropy(Counts(["a", "b", "b", "c"])).method == "chao_shen"
    mixed = entropy(np.stack([np.pad(well, (0, 97)), under]))
    assert mixed.method.tolist() == ["miller_madow", "nsb"]
    assert np.isnan(mixed.std_error[0]) and mixed.std_error[1] > 0


def test_estimate_result_object():
    est = entropy([4, 2, 1, 1, 0])
    assert float(est) == est.value
    assert np.asarray(est).shape == ()
    assert "method='nsb'" in repr(est)


def test_estimate_equality():
    c = np.array([[4, 2, 1], [1, 1, 1]])
    a = entropy_interval_for_equality(c, seed=3)
    assert a == entropy_interval_for_equality(c, seed=3)
    assert a != entropy_interval_for_equality(c, seed=4)
    assert entropy(c, method="plugin") == entropy(c, method="plugin")
    assert entropy(c, method="plugin") != entropy(c, method="zhang")


def entropy_interval_for_equality(c, seed):
    from crossentropy.estimate import entropy_interval

    return entropy_interval(c, method="jackknife", n_boot=20, seed=seed)


@pytest.mark.parametrize("method", METHODS)
def test_alphabet_size_beyond_the_listed_counts(method):
    # The bootstrap lists only observed cells and passes K; it must match the padded row.
    from crossentropy.estimate._estimators import ESTIMATORS

    listed = np.array([[5, 3, 1, 0], [2, 2, 0, 0]])
    padded = np.pad(listed, ((0, 0), (0, 6)))
    np.testing.assert_allclose(
        ESTIMATORS[method](listed, K=10), entropy(padded, method=method).value, rtol=1e-12
    )


def test_bootstrap_blocks_do_not_change_the_interval(monkeypatch):
    from crossentropy.estimate import _entropy, entropy_interval

    c = np.random.default_rng(0).multinomial(3000, np.full(500, 1 / 500))
    whole = entropy_interval(c, method="shrinkage", n_boot=50, seed=1)
    monkeypatch.setattr(_entropy, "_BOOT_BUDGET", 4000)  # one row no longer fits a block
    blocked = entropy_interval(c, method="shrinkage", n_boot=50, seed=1)
    assert blocked.std_error == pytest.approx(whole.std_error, rel=1e-12)
