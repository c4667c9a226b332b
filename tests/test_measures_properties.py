"""Hypothesis properties of the measures (NumPy, float64).

Each property is a theorem about the exact quantities (Gibbs, Pinsker, the identity
H = D + S, additivity over independent products, ...); the tolerances only absorb float64
rounding, scaled by the size of the terms summed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
from _measures_support import PROPERTY_SETTINGS
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce

EPS = np.finfo(np.float64).eps
LOG2 = math.log(2.0)

# ----------------------------------------------------------------------------- strategies

# Weights: exact zeros, tiny values, and ordinary ones.
_weight = st.one_of(
    st.just(0.0),
    st.floats(1e-300, 1e-10),
    st.floats(1e-3, 1.0),
)
_positive_weight = st.one_of(st.floats(1e-12, 1e-6), st.floats(1e-3, 1.0))


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.array(w, dtype=np.float64)
    if not (w.sum(-1) > 0).all():
        w[..., 0] = np.where(w.sum(-1) > 0, w[..., 0], 1.0)
    return w / w.sum(-1, keepdims=True)


@st.composite
def simplex(draw, k: int, *, batch: tuple[int, ...] = (), positive: bool = False):
    elements = _positive_weight if positive else _weight
    w = draw(hnp.arrays(np.float64, (*batch, k), elements=elements))
    return _normalise(w)


@st.composite
def pair(draw, *, q_covers_p: bool = True, max_k: int = 8, batch: tuple[int, ...] = ()):
    """(p, q) with a common number of classes; q > 0 wherever p > 0 if q_covers_p."""
    k = draw(st.integers(1, max_k))
    p = draw(simplex(k, batch=batch))
    q = draw(simplex(k, batch=batch))
    if q_covers_p:
        q = _normalise(np.where((p > 0) & (q == 0), 0.5, q))
    return p, q


def _terms(p: np.ndarray, q: np.ndarray) -> float:
    """Sum of |p log p| + |p log q| over a row (the largest row): the scale of rounding."""
    with np.errstate(divide="ignore"):
        t = np.abs(scipy.special.xlogy(p, p)) + np.abs(scipy.special.xlogy(p, q))
    t = np.where(np.isfinite(t), t, 0.0)
    return float(np.max(t.sum(-1), initial=0.0)) + 1.0


def _close(a, b, scale: float, ulps: float = 64) -> None:
    np.testing.assert_allclose(a, b, rtol=ulps * EPS, atol=ulps * EPS * scale)


# ----------------------------------------------------------------------------- Gibbs


@PROPERTY_SETTINGS
@given(pair(q_covers_p=False))
def test_gibbs_kl_nonnegative_and_pinsker(pq):
    p, q = pq
    d = ce.kl_divergence(p, q)
    assert not np.isnan(d)
    assert d >= 0
    # Pinsker (independent lower bound): D(p || q) >= 1/2 ||p - q||_1^2. So KL > 0 as
    # soon as p != q, by a margin the rounding cannot hide.
    l1 = float(np.abs(p - q).sum())
    assert d >= 0.5 * l1**2 - 64 * EPS * _terms(p, q)


@PROPERTY_SETTINGS
@given(st.integers(1, 10).flatmap(simplex))
def test_gibbs_kl_zero_iff_equal(p):
    assert ce.kl_divergence(p, p) == 0.0
    assert ce.kl_divergence(p, p.copy(), base=2) == 0.0
    # And for another representation of the same distribution.
    with np.errstate(divide="ignore"):
        lp = np.log(p)
    assert ce.kl_divergence(p, ce.LogProbs(lp)) == 0.0
    assert ce.kl_divergence(p, ce.Logits(lp)) <= 64 * EPS * _terms(p, p)


@PROPERTY_SETTINGS
@given(pair(q_covers_p=False))
def test_kl_is_infinite_exactly_when_q_misses_p(pq):
    p, q = pq
    misses = bool(((p > 0) & (q == 0)).any())
    assert np.isinf(ce.kl_divergence(p, q)) == misses
    assert np.isinf(ce.cross_entropy(p, q)) == misses
    assert np.isfinite(ce.entropy(p))


# ----------------------------------------------------------------------------- identity


@PROPERTY_SETTINGS
@given(pair(q_covers_p=False, batch=(3,)))
def test_identity_decompose_within_ulps(pq):
    p, q = pq
    h, s, d = ce.decompose(p, q)
    assert isinstance(ce.decompose(p, q), ce.Decomposition)
    finite = np.isfinite(h)
    np.testing.assert_array_equal(finite, np.isfinite(d))
    # H == D + S to a few ulps of H (issue 2: "within a few ulps").
    assert np.all(np.abs(h[finite] - (d + s)[finite]) <= 4 * np.spacing(np.abs(h[finite])))
    assert np.all(s >= 0) and np.all(d >= 0)


@PROPERTY_SETTINGS
@given(pair(q_covers_p=True, batch=(3,)))
def test_identity_separate_functions(pq):
    p, q = pq
    h, s, d = ce.decompose(p, q)
    scale = _terms(p, q)
    _close(ce.cross_entropy(p, q), ce.kl_divergence(p, q) + ce.entropy(p), scale)
    _close(ce.cross_entropy(p, q), h, scale)
    np.testing.assert_array_equal(s, ce.entropy(p))
    np.testing.assert_array_equal(d, ce.kl_divergence(p, q))


@PROPERTY_SETTINGS
@given(
    st.integers(1, 8).flatmap(
        lambda k: st.tuples(simplex(k), hnp.arrays(np.float64, k, elements=st.floats(-50, 50)))
    )
)
def test_identity_with_logits(pz):
    p, z = pz
    h, s, d = ce.decompose(p, ce.Logits(z))
    assert abs(h - (d + s)) <= 4 * np.spacing(abs(h))
    # Against the probabilities softmax(z) computed by scipy.
    lq = scipy.special.log_softmax(z)
    scale = _terms(p, np.exp(lq)) + float(np.abs(lq).max())
    _close(ce.cross_entropy(p, ce.Logits(z)), -(p * lq).sum(), scale)
    _close(ce.cross_entropy(p, ce.Logits(z)), ce.cross_entropy(p, ce.LogProbs(lq)), scale)


# ----------------------------------------------------------------------------- JS


@PROPERTY_SETTINGS
@given(pair(q_covers_p=False, batch=(2,)))
def test_js_symmetric_bounded(pq):
    p, q = pq
    js = ce.js_divergence(p, q)
    np.testing.assert_allclose(js, ce.js_divergence(q, p), rtol=4 * EPS, atol=4 * EPS)
    assert np.all(js >= 0)
    assert np.all(js <= LOG2)
    assert np.all(ce.js_divergence(p, q, base=2) <= 1.0)
    # Independent formula: JS = S(m) - (S(p) + S(q)) / 2, m the mixture (scipy entr).
    m = (p + q) / 2
    ent = scipy.special.entr
    expected = ent(m).sum(-1) - (ent(p).sum(-1) + ent(q).sum(-1)) / 2
    _close(js, expected, _terms(p, p) + _terms(q, q))


@PROPERTY_SETTINGS
@given(st.integers(2, 8).flatmap(lambda k: st.tuples(st.just(k), st.integers(1, k - 1))))
def test_js_of_disjoint_supports_is_log2(kk):
    k, cut = kk
    p = np.zeros(k)
    q = np.zeros(k)
    p[:cut] = 1.0 / cut
    q[cut:] = 1.0 / (k - cut)
    assert ce.js_divergence(p, q) == pytest.approx(LOG2, rel=4 * EPS)
    assert ce.js_divergence(p, q, base=2) == pytest.approx(1.0, rel=4 * EPS)


# ----------------------------------------------------------------------------- invariances


@PROPERTY_SETTINGS
@given(st.data())
def test_permutation_invariance(data):
    p, q = data.draw(pair(q_covers_p=False, batch=(2,)))
    perm = data.draw(st.permutations(range(p.shape[-1])))
    pp, qq = p[..., perm], q[..., perm]
    scale = _terms(p, q)
    for f in (ce.cross_entropy, ce.kl_divergence, ce.js_divergence):
        _close(f(pp, qq), f(p, q), scale)
    _close(ce.entropy(pp), ce.entropy(p), scale)
    _close(ce.decompose(pp, qq).cross_entropy, ce.decompose(p, q).cross_entropy, scale)


@PROPERTY_SETTINGS
@given(pair(q_covers_p=True), pair(q_covers_p=True))
def test_additivity_over_independent_products(pq1, pq2):
    (p1, q1), (p2, q2) = pq1, pq2
    p12 = np.outer(p1, p2).ravel()
    q12 = np.outer(q1, q2).ravel()
    # The outer product sums to 1 only to rounding; renormalising changes it by ulps.
    p12, q12 = p12 / p12.sum(), q12 / q12.sum()
    # Products of tiny values can underflow to 0 or to a subnormal with few exact bits:
    # then the product itself is not the product distribution. Keep exact ones.
    tiny = np.finfo(np.float64).tiny
    exact = np.outer(p1 > 0, p2 > 0).ravel() == (p12 >= tiny)
    exact &= np.outer(q1 > 0, q2 > 0).ravel() == (q12 >= tiny)
    assume(exact.all())
    scale = _terms(p12, q12) + _terms(p1, q1) + _terms(p2, q2)
    _close(ce.entropy(p12), ce.entropy(p1) + ce.entropy(p2), scale)
    _close(ce.kl_divergence(p12, q12), ce.kl_divergence(p1, q1) + ce.kl_divergence(p2, q2), scale)
    _close(ce.cross_entropy(p12, q12), ce.cross_entropy(p1, q1) + ce.cross_entropy(p2, q2), scale)


# Bases must exceed 1 (issue 11: a base in (0, 1) made KL and JS negative).
_bases = st.floats(1.001, 100.0)


@PROPERTY_SETTINGS
@given(pair(q_covers_p=True, batch=(2,)), _bases)
def test_base_conversion(pq, base):
    p, q = pq
    scale = _terms(p, q) / abs(math.log(base))
    for f, args in (
        (ce.entropy, (p,)),
        (ce.cross_entropy, (p, q)),
        (ce.kl_divergence, (p, q)),
        (ce.js_divergence, (p, q)),
    ):
        _close(f(*args, base=base), f(*args) / math.log(base), scale)
    h, _s, d = ce.decompose(p, q, base=base)
    _close(h, ce.cross_entropy(p, q) / math.log(base), scale)
    _close(d, ce.kl_divergence(p, q) / math.log(base), scale)


@pytest.mark.parametrize("base", [2, 2.0, np.float64(2), np.int64(2), np.float32(2)])
def test_base_2_spellings_agree(base):
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    # Hand derivation: S = 1.5 bits; D = 1/2 log2 2 + 1/4 * 0 + 1/4 log2(1/2) = 0.25 bits.
    assert ce.entropy(p, base=base) == pytest.approx(1.5, rel=4 * EPS)
    assert ce.kl_divergence(p, q, base=base) == pytest.approx(0.25, rel=4 * EPS)


@PROPERTY_SETTINGS
@given(st.data())
def test_axis_is_transposition(data):
    k = data.draw(st.integers(1, 6))
    a, b = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    p = data.draw(simplex(k, batch=(a, b)))
    q = data.draw(simplex(k, batch=(a, b)))
    q = _normalise(np.where((p > 0) & (q == 0), 0.5, q))
    scale = _terms(p, q)
    for axis in (0, 1, 2, -1, -2, -3):
        pt, qt = np.moveaxis(p, -1, axis), np.moveaxis(q, -1, axis)
        _close(ce.entropy(pt, axis=axis), ce.entropy(p), scale)
        for f in (ce.cross_entropy, ce.kl_divergence, ce.js_divergence):
            _close(f(pt, qt, axis=axis), f(p, q), scale)
        _close(ce.decompose(pt, qt, axis=axis).kl_divergence, ce.kl_divergence(p, q), scale)


@PROPERTY_SETTINGS
@given(st.data())
def test_broadcasting(data):
    k = data.draw(st.integers(1, 6))
    n, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    p = data.draw(simplex(k, batch=(n, 1)))
    q = data.draw(simplex(k, batch=(1, m)))
    q = np.broadcast_to(q, (n, m, k))
    q = _normalise(np.where((np.broadcast_to(p, (n, m, k)) > 0) & (q == 0), 0.5, q))[:1]
    scale = _terms(np.broadcast_to(p, (n, m, k)), np.broadcast_to(q, (n, m, k)))
    for f in (ce.cross_entropy, ce.kl_divergence, ce.js_divergence):
        got = f(p, q)
        assert got.shape == (n, m)
        explicit = np.array([[f(p[i, 0], q[0, j]) for j in range(m)] for i in range(n)])
        _close(got, explicit, scale)
    # A single distribution against a batch.
    _close(ce.kl_divergence(p[0, 0], q[0]), ce.kl_divergence(np.tile(p[0], (m, 1)), q[0]), scale)


@PROPERTY_SETTINGS
@given(st.data())
def test_labels_broadcast_like_one_hot(data):
    k = data.draw(st.integers(1, 6))
    n = data.draw(st.integers(1, 4))
    q = data.draw(simplex(k, batch=(n,), positive=True))
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    onehot = np.eye(k)[y]
    scale = _terms(onehot, q)
    for f in (ce.cross_entropy, ce.kl_divergence, ce.js_divergence):
        _close(f(ce.Labels(y), q), f(onehot, q), scale)
    # H(onehot, q) = -log q_y (hand derivation).
    _close(ce.cross_entropy(ce.Labels(y), q), -np.log(q[np.arange(n), y]), scale)


@PROPERTY_SETTINGS
@given(st.data())
def test_keepdims_shapes(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    event_last = (*np.delete(shape, axis), shape[axis])
    p = np.moveaxis(_normalise(rng.random(event_last)), -1, axis)
    q = np.moveaxis(_normalise(rng.random(event_last)), -1, axis)
    assert p.shape == shape and q.shape == shape
    expected_shape = np.sum(p, axis=axis, keepdims=True).shape
    for f, args in (
        (ce.entropy, (p,)),
        (ce.cross_entropy, (p, q)),
        (ce.kl_divergence, (p, q)),
        (ce.js_divergence, (p, q)),
    ):
        kept = f(*args, axis=axis, keepdims=True)
        flat = f(*args, axis=axis)
        assert np.shape(kept) == expected_shape
        assert np.shape(flat) == np.sum(p, axis=axis).shape
        np.testing.assert_array_equal(np.squeeze(kept, axis=axis), flat)
    for part in ce.decompose(p, q, axis=axis, keepdims=True):
        assert np.shape(part) == expected_shape


@PROPERTY_SETTINGS
@given(
    st.integers(1, 8).flatmap(
        lambda k: st.tuples(
            hnp.arrays(np.float64, k, elements=st.floats(-30, 30)), st.floats(-1e3, 1e3)
        )
    )
)
def test_logits_shift_invariance(zc):
    z, c = zc
    scale = 64.0
    _close(ce.entropy(ce.Logits(z + c)), ce.entropy(ce.Logits(z)), scale, ulps=2048)
    p = scipy.special.softmax(z)
    _close(ce.entropy(ce.Logits(z)), scipy.special.entr(p).sum(), scale)
