"""Edge cases of the measures: zeros, masked and extreme logits, odd and empty shapes,
input forms, dtypes.

Expected values are derived by hand in the comments (with ``math.log``) or computed by
scipy/torch on the same inputs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats

import crossentropy as ce

LOG2 = math.log(2.0)
LOG4 = math.log(4.0)
INF = math.inf

# jax runs eagerly op by op here, compiling each new shape: it is slow on two cores, so
# it takes part where the backend matters most (zeros, masked logits, dtypes).
BACKENDS = ["numpy", "torch"]
ALL_BACKENDS = ["numpy", "torch", "jax"]


def arr(backend: str, values, dtype: str = "float64"):
    """``values`` in ``backend``; jax without x64 stores float64 as float32."""
    if backend == "numpy":
        return np.asarray(values, dtype=dtype)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return torch.tensor(np.asarray(values, dtype=np.float64)).to(getattr(torch, dtype))
    jax = pytest.importorskip("jax")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        dtype = "float32"
    return jax.numpy.asarray(np.asarray(values, dtype=dtype))


def ints(backend: str, values):
    if backend == "numpy":
        return np.asarray(values, dtype=np.int64)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return torch.tensor(values, dtype=torch.int64)
    jnp = pytest.importorskip("jax.numpy")
    return jnp.asarray(values, dtype=jnp.int32)


def val(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float() if str(x.dtype).endswith(("16",)) else x.detach()
        return x.cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def rtol_for(backend: str) -> float:
    # jax without x64 computes in float32.
    return 1e-6 if backend == "jax" else 1e-14


# ----------------------------------------------------------------------------- zeros


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_on_the_data_side_contributes_nothing(backend):
    p = arr(backend, [0.5, 0.5, 0.0])
    q = arr(backend, [0.25, 0.25, 0.5])
    r = rtol_for(backend)
    # 0 log 0 = 0: S = log 2. H = -(1/2 log 1/4 + 1/2 log 1/4) = log 4.
    # D = 1/2 log 2 + 1/2 log 2 + 0 log(0 / 0.5) = log 2.
    assert val(ce.entropy(p)) == pytest.approx(LOG2, rel=r)
    assert val(ce.cross_entropy(p, q)) == pytest.approx(LOG4, rel=r)
    assert val(ce.kl_divergence(p, q)) == pytest.approx(LOG2, rel=r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_on_both_sides_is_zero_not_nan(backend):
    p = arr(backend, [0.5, 0.5, 0.0])
    q = arr(backend, [0.5, 0.5, 0.0])
    assert val(ce.kl_divergence(p, q)) == 0.0
    assert val(ce.cross_entropy(p, q)) == pytest.approx(LOG2, rel=rtol_for(backend))
    assert val(ce.js_divergence(p, q)) == 0.0
    h, _s, d = ce.decompose(p, q)
    assert val(d) == 0.0 and not np.isnan(val(h))


@pytest.mark.parametrize("backend", BACKENDS)
def test_p_positive_where_q_zero_is_inf(backend):
    p = arr(backend, [[0.5, 0.5], [1.0, 0.0]])
    q = arr(backend, [[1.0, 0.0], [0.0, 1.0]])
    assert np.all(val(ce.kl_divergence(p, q)) == INF)
    assert np.all(val(ce.cross_entropy(p, q)) == INF)
    h, s, d = ce.decompose(p, q)
    assert np.all(val(h) == INF) and np.all(val(d) == INF)
    np.testing.assert_allclose(val(s), [LOG2, 0.0], rtol=rtol_for(backend))
    # JS stays finite: the mixture covers both. Row 0: hand derivation with m = (3/4, 1/4):
    # 1/2 [1/2 log(2/3) + 1/2 log 2] + 1/2 [log(4/3)]; row 1: disjoint supports -> log 2.
    js0 = 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2)) + 0.5 * math.log(4 / 3)
    np.testing.assert_allclose(val(ce.js_divergence(p, q)), [js0, LOG2], rtol=rtol_for(backend))


def test_subnormal_q_does_not_overflow_the_ratio():
    # p / q overflows to inf for q = 5e-324, but log p - log q is finite. Hand
    # derivation with math.log, and scipy's rel_entr.
    p = np.array([0.5, 0.5])
    q = np.array([1.0, 5e-324])
    expected = 0.5 * math.log(0.5 / 1.0) + 0.5 * (math.log(0.5) - math.log(5e-324))
    assert ce.kl_divergence(p, q) == pytest.approx(expected, rel=1e-14)
    assert ce.kl_divergence(p, q) == pytest.approx(scipy.special.rel_entr(p, q).sum(), rel=1e-14)
    assert ce.cross_entropy(p, q) == pytest.approx(-0.5 * math.log(5e-324), rel=1e-14)


def test_kl_never_negative_where_h_minus_s_is():
    # softmax(z) against Logits(z): D = 0, while H - S computed separately can round
    # below 0 (the packages that compute KL as CE - S return negative numbers).
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 7)) * 10
    p = scipy.special.softmax(z, axis=-1)
    d = ce.kl_divergence(p, ce.Logits(z), validate=False)
    h_minus_s = ce.cross_entropy(p, ce.Logits(z), validate=False) - ce.entropy(p, validate=False)
    assert (h_minus_s < 0).any()  # the trap exists on these inputs
    assert (d >= 0).all()
    assert np.max(d) < 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_certain_outcome_has_entropy_positive_zero(backend):
    s = val(ce.entropy(arr(backend, [0.0, 1.0, 0.0])))
    assert s == 0.0 and not np.signbit(s)


_QUIET_CASES = {
    "zeros": (
        np.array([[0.5, 0.5, 0.0], [0.2, 0.0, 0.8]]),
        np.array([[0.5, 0.0, 0.5], [0.2, 0.0, 0.8]]),
    ),
    "zeros-float32": (
        np.array([[0.5, 0.5, 0], [0, 0, 1]], np.float32),
        np.array([[0.5, 0, 0.5], [0, 0, 1]], np.float32),
    ),
    "zeros-float16": (
        np.array([[0.5, 0.5, 0], [0, 0, 1]], np.float16),
        np.array([[0.5, 0, 0.5], [0, 0, 1]], np.float16),
    ),
    "subnormal-q": (np.array([0.5, 0.5]), np.array([1.0, 5e-324])),
    "subnormal-q-float32": (np.array([0.5, 0.5], np.float32), np.array([1, 1e-45], np.float32)),
    "masked-logits": (np.array([0.5, 0.5, 0.0]), ce.Logits(np.array([0.0, 0.0, -INF]))),
    "one-finite-logit": (np.array([1.0, 0.0, 0.0]), ce.Logits(np.array([0.0, -INF, -INF]))),
    "log-probs-neg-inf": (ce.LogProbs(np.array([0.0, -INF])), ce.LogProbs(np.array([0.0, -INF]))),
    "labels-vs-zero": (ce.Labels(np.array(1)), np.array([1.0, 0.0])),
    "huge-logits": (np.array([0.5, 0.5]), ce.Logits(np.array([1e308, -1e308]))),
}


@pytest.mark.parametrize("case", list(_QUIET_CASES))
def test_numpy_edges_emit_no_runtime_warnings(case):
    # Edge values are part of the domain: no "invalid value"/"divide by zero" warnings
    # (which -W error would turn into failures in user code).
    p, q = _QUIET_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ce.cross_entropy(p, q)
        ce.kl_divergence(p, q)
        ce.js_divergence(p, q)
        ce.decompose(p, q)
        ce.entropy(p)


# ----------------------------------------------------------------------------- one class


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_class_distributions(backend):
    p = arr(backend, [[1.0], [1.0]])
    for value in (
        ce.entropy(p),
        ce.cross_entropy(p, p),
        ce.kl_divergence(p, p),
        ce.js_divergence(p, p),
        *ce.decompose(p, p),
    ):
        np.testing.assert_array_equal(val(value), [0.0, 0.0])
    z = arr(backend, [[5.0], [-300.0]])
    np.testing.assert_array_equal(val(ce.entropy(ce.Logits(z))), [0.0, 0.0])
    y = ints(backend, [0, 0])
    np.testing.assert_array_equal(val(ce.cross_entropy(ce.Labels(y), ce.Logits(z))), [0, 0])


# ----------------------------------------------------------------------------- logits


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_neg_inf_logits_where_p_is_zero(backend):
    z = arr(backend, [0.0, 0.0, -INF])
    p = arr(backend, [0.5, 0.5, 0.0])
    r = rtol_for(backend)
    # softmax(z) = (1/2, 1/2, 0) exactly.
    assert val(ce.kl_divergence(p, ce.Logits(z))) == 0.0
    assert val(ce.cross_entropy(p, ce.Logits(z))) == pytest.approx(LOG2, rel=r)
    assert val(ce.entropy(ce.Logits(z))) == pytest.approx(LOG2, rel=r)
    assert val(ce.js_divergence(p, ce.Logits(z))) == 0.0
    assert val(ce.cross_entropy(ce.Labels(ints(backend, 1)), ce.Logits(z))) == pytest.approx(
        LOG2, rel=r
    )
    # A masked class that the data does take: +inf.
    assert val(ce.cross_entropy(ce.Labels(ints(backend, 2)), ce.Logits(z))) == INF
    assert val(ce.kl_divergence(arr(backend, [0.5, 0.0, 0.5]), ce.Logits(z))) == INF


@pytest.mark.parametrize("backend", BACKENDS)
def test_neg_inf_log_probs_where_p_is_zero(backend):
    lp = arr(backend, [math.log(0.5), math.log(0.5), -INF])
    p = arr(backend, [0.5, 0.5, 0.0])
    r = rtol_for(backend)
    assert val(ce.entropy(ce.LogProbs(lp))) == pytest.approx(LOG2, rel=r)
    assert val(ce.kl_divergence(p, ce.LogProbs(lp))) == pytest.approx(0.0, abs=1e-7)
    assert val(ce.kl_divergence(ce.LogProbs(lp), p)) == pytest.approx(0.0, abs=1e-7)
    assert val(ce.cross_entropy(ce.LogProbs(lp), ce.Logits(lp))) == pytest.approx(LOG2, rel=r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend):
    z = arr(backend, [[1000.0, -1000.0], [1000.0, 1000.0], [-1000.0, -1000.0], [1000.0, -INF]])
    y = ints(backend, [1, 0, 1, 0])
    # Hand derivation: log_softmax([1000, -1000]) = (-log(1 + e^-2000), -2000 - ...) =
    # (0, -2000) in float64; equal logits -> (-log 2, -log 2) whatever their size.
    np.testing.assert_allclose(
        val(ce.cross_entropy(ce.Labels(y), ce.Logits(z))),
        [2000.0, LOG2, LOG2, 0.0],
        rtol=rtol_for(backend),
    )
    np.testing.assert_allclose(
        val(ce.entropy(ce.Logits(z))), [0.0, LOG2, LOG2, 0.0], rtol=rtol_for(backend), atol=1e-300
    )
    p = arr(backend, [[0.5, 0.5]] * 4)
    # D(u || softmax z) = -log 2 - 1/2 sum log_softmax(z): 999.3069, 0, 0, inf.
    np.testing.assert_allclose(
        val(ce.kl_divergence(p, ce.Logits(z))),
        [1000 - LOG2, 0.0, 0.0, INF],
        rtol=rtol_for(backend),
        atol=1e-6 if backend == "jax" else 1e-13,
    )


def test_extreme_logits_match_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    z = torch.tensor([[1000.0, -1000.0, 3.0], [-1000.0, -999.0, -1001.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    expected = torch.nn.functional.cross_entropy(z, y, reduction="none").numpy()
    np.testing.assert_allclose(
        val(ce.cross_entropy(ce.Labels(y), ce.Logits(z))), expected, rtol=1e-14
    )


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [
        ("numpy", "float64"),
        # float32 rows are summed pairwise (a plain float32 dot product gave 13.81420 for
        # log 1e6 = 13.81551; scipy.special.entr(p).sum() in float32 gives 13.815512).
        ("numpy", "float32"),
        ("torch", "float64"),
        ("torch", "float32"),
    ],
)
def test_huge_event_axis(backend, dtype):
    k = 1_000_000
    rng = np.random.default_rng(0)
    u = np.full(k, 1.0 / k)
    q64 = rng.gamma(1.0, size=k)
    q64 /= q64.sum()
    p, q = arr(backend, u, dtype), arr(backend, q64, dtype)
    rtol = 1e-10 if dtype == "float64" else 2e-5
    # Hand: S(uniform over K) = log K.
    assert val(ce.entropy(p)) == pytest.approx(math.log(k), rel=rtol)
    qv = val(q)
    expected_kl = scipy.special.rel_entr(val(p), qv).sum()
    assert val(ce.kl_divergence(p, q)) == pytest.approx(expected_kl, rel=max(rtol, 1e-12) * 100)
    h, _s, _d = ce.decompose(p, q)
    assert val(h) == pytest.approx(-scipy.special.xlogy(val(p), qv).sum(), rel=rtol)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_odd_shape(backend):
    rng = np.random.default_rng(1)
    p64 = rng.gamma(1.0, size=(3, 423, 17))
    q64 = rng.gamma(1.0, size=(3, 423, 17))
    for axis in (-1, 1, 0):
        pn = p64 / p64.sum(axis, keepdims=True)
        qn = q64 / q64.sum(axis, keepdims=True)
        p, q = arr(backend, pn), arr(backend, qn)
        np.testing.assert_allclose(
            val(ce.entropy(p, axis=axis)), scipy.stats.entropy(pn, axis=axis), rtol=1e-12
        )
        np.testing.assert_allclose(
            val(ce.kl_divergence(p, q, axis=axis)),
            scipy.stats.entropy(pn, qn, axis=axis),
            rtol=1e-12,
            atol=1e-14,
        )
        assert tuple(ce.cross_entropy(p, q, axis=axis).shape) == tuple(
            np.delete(p64.shape, axis % 3)
        )


@pytest.mark.parametrize(
    "backend",
    [
        "numpy",
        "torch",
        "jax",
    ],
)
def test_empty_batch(backend):
    p = arr(backend, np.zeros((0, 4)))
    for result in (
        ce.entropy(p),
        ce.cross_entropy(p, p),
        ce.kl_divergence(p, p),
        ce.js_divergence(p, p),
        *ce.decompose(p, p),
    ):
        assert tuple(result.shape) == (0,)
    assert tuple(ce.entropy(arr(backend, np.zeros((2, 0, 3)))).shape) == (2, 0)
    assert tuple(ce.kl_divergence(p, p, keepdims=True).shape) == (0, 1)
    assert tuple(ce.entropy(arr(backend, np.zeros((5, 0))), axis=0).shape) == (0,)
    y = ints(backend, np.zeros(0, dtype=int))
    assert tuple(ce.cross_entropy(ce.Labels(y), ce.Logits(p)).shape) == (0,)


@pytest.mark.parametrize("backend", ["numpy"])
def test_empty_batch_without_validation(backend):
    p = arr(backend, np.zeros((0, 4)))
    assert tuple(ce.kl_divergence(p, p, validate=False).shape) == (0,)


def test_empty_batch_torch_without_validation():
    torch = pytest.importorskip("torch")
    p = torch.zeros(0, 4, dtype=torch.float64)
    assert tuple(ce.kl_divergence(p, p, validate=False).shape) == (0,)
    assert tuple(ce.entropy(ce.Logits(p), validate=False).shape) == (0,)


# ----------------------------------------------------------------------------- forms


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_with_probabilities_and_logits(backend):
    q = arr(backend, [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    y = ints(backend, [0, 2])
    r = rtol_for(backend)
    # Hand: H(onehot(y), q) = -log q_y = (log 2, log 4); S(onehot) = 0 so D = H.
    np.testing.assert_allclose(val(ce.cross_entropy(ce.Labels(y), q)), [LOG2, LOG4], rtol=r)
    np.testing.assert_allclose(val(ce.kl_divergence(ce.Labels(y), q)), [LOG2, LOG4], rtol=r)
    h, s, _d = ce.decompose(ce.Labels(y), q)
    np.testing.assert_array_equal(val(s), [0.0, 0.0])
    np.testing.assert_allclose(val(h), [LOG2, LOG4], rtol=r)
    np.testing.assert_array_equal(val(ce.entropy(ce.Labels(y))), [0.0, 0.0])
    z = arr(backend, [[0.0, 0.0], [0.0, math.log(3.0)]])  # softmax: (1/2,1/2), (1/4,3/4)
    np.testing.assert_allclose(
        val(ce.cross_entropy(ce.Labels(ints(backend, [1, 1])), ce.Logits(z))),
        [LOG2, math.log(4 / 3)],
        rtol=max(r, 1e-15),
    )
    # Labels broadcast against a batch of q like the batch shape.
    assert tuple(ce.cross_entropy(ce.Labels(ints(backend, [1])), q).shape) == (2,)


def test_labels_broadcast_against_q_batch():
    # Labels of shape (2, 1) against q of batch shape (3,): the result is (2, 3).
    q = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    y = np.array([[0], [2]])
    expected = -np.log(q[:, y[:, 0]]).T  # hand: -log q[j, y_i]
    for f in (ce.cross_entropy, ce.kl_divergence):
        np.testing.assert_allclose(f(ce.Labels(y), q), expected, rtol=1e-15)
    parts = ce.decompose(ce.Labels(y), q, keepdims=True)
    assert [np.shape(x) for x in parts] == [(2, 3, 1)] * 3
    assert ce.Decomposition._fields == ("cross_entropy", "entropy", "kl_divergence")


def test_labels_are_a_point_mass_matching_one_hot():
    rng = np.random.default_rng(3)
    q = rng.gamma(1.0, size=(4, 5, 6))
    q /= q.sum(-1, keepdims=True)
    y = rng.integers(0, 6, size=(4, 5))
    onehot = np.eye(6)[y]
    for f in (ce.cross_entropy, ce.kl_divergence, ce.js_divergence):
        np.testing.assert_allclose(f(ce.Labels(y), q), f(onehot, q), rtol=1e-14)
    # axis: labels lack the event axis; axis names it in q.
    np.testing.assert_allclose(
        ce.cross_entropy(ce.Labels(y), np.moveaxis(q, -1, 1), axis=1),
        ce.cross_entropy(onehot, q),
        rtol=1e-14,
    )


def test_python_lists_and_scalars():
    # Lists are NumPy; integer entries are probabilities (hand: S(1/2, 1/2) = log 2).
    s = ce.entropy([0.5, 0.5])
    assert isinstance(s, (float, np.floating)) and s == pytest.approx(LOG2, rel=1e-15)
    assert ce.entropy([1, 0]) == 0.0
    assert ce.kl_divergence([1, 0], [0.5, 0.5]) == pytest.approx(LOG2, rel=1e-15)
    assert ce.cross_entropy(ce.Labels(0), [0.5, 0.5]) == pytest.approx(LOG2, rel=1e-15)
    assert ce.cross_entropy(ce.Labels(1), ce.Logits([0, 0])) == pytest.approx(LOG2, rel=1e-15)
    np.testing.assert_allclose(
        ce.cross_entropy(ce.Labels([0, 1]), [[0.5, 0.5], [0.75, 0.25]]), [LOG2, LOG4], rtol=1e-15
    )
    # A list against an array takes the array's library.
    torch = pytest.importorskip("torch")
    out = ce.kl_divergence([0.5, 0.5], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and float(out) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_keepdims_and_axes(backend):
    rng = np.random.default_rng(4)
    p64 = rng.gamma(1.0, size=(2, 3, 4))
    for axis in (0, 1, 2, -1, -2, -3):
        pn = p64 / p64.sum(axis, keepdims=True)
        p = arr(backend, pn)
        kept = ce.entropy(p, axis=axis, keepdims=True)
        assert tuple(kept.shape) == np.sum(pn, axis=axis, keepdims=True).shape
        np.testing.assert_allclose(
            val(kept),
            scipy.stats.entropy(pn, axis=axis)[(slice(None),) * (axis % 3) + (None,)],
            rtol=rtol_for(backend),
        )
        h, _s, d = ce.decompose(p, p, axis=axis, keepdims=True)
        assert tuple(h.shape) == tuple(kept.shape) == tuple(d.shape)
    # keepdims on a single distribution.
    assert tuple(ce.entropy(arr(backend, [0.5, 0.5]), keepdims=True).shape) == (1,)


def test_decompose_parts_share_the_broadcast_shape():
    p, q = np.full(5, 0.2), np.full((3, 5), 0.2)
    assert [np.shape(x) for x in ce.decompose(p, q)] == [(3,)] * 3


def test_decompose_keepdims_with_broadcasting():
    p, q = np.full(5, 0.2), np.full((3, 5), 0.2)
    assert [np.shape(x) for x in ce.decompose(p, q, keepdims=True)] == [(3, 1)] * 3


def test_keepdims_with_broadcasting_and_labels():
    q = np.full((2, 3, 4), 0.25)
    assert ce.kl_divergence(np.full(4, 0.25), q, keepdims=True).shape == (2, 3, 1)
    y = np.zeros((2, 3), dtype=int)
    assert ce.cross_entropy(ce.Labels(y), q, keepdims=True).shape == (2, 3, 1)
    qt = np.moveaxis(q, -1, 0)
    assert ce.cross_entropy(ce.Labels(y), qt, axis=0, keepdims=True).shape == (1, 2, 3)
    assert ce.entropy(ce.Labels(y), keepdims=True).shape == (2, 3, 1)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("pd", "qd", "expected"),
    [
        ("float32", "float64", "float64"),
        ("float64", "float32", "float64"),
        ("float16", "float32", "float32"),
        ("float16", "float16", "float32"),
        ("float16", "float64", "float64"),
        ("float32", "float32", "float32"),
    ],
)
def test_mixed_dtypes_promote(backend, pd, qd, expected):
    p = arr(backend, [0.5, 0.25, 0.25], pd)
    q = arr(backend, [0.25, 0.25, 0.5], qd)
    for result in (
        ce.cross_entropy(p, q),
        ce.kl_divergence(p, q),
        ce.js_divergence(p, q),
        *ce.decompose(p, q),
        ce.decompose(p, ce.Logits(q)).kl_divergence,
    ):
        assert str(result.dtype).endswith(expected), (result.dtype, expected)


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [
        ("numpy", "float16"),
        ("torch", "float16"),
        ("torch", "bfloat16"),
        ("jax", "float16"),
        ("jax", "bfloat16"),
    ],
)
def test_half_precision_returns_float32(backend, dtype):
    p = arr(backend, [[0.5, 0.25, 0.25]], dtype)
    q = arr(backend, [[0.25, 0.25, 0.5]], dtype)
    y = ints(backend, [0])
    results = [
        ce.entropy(p),
        ce.cross_entropy(p, q),
        ce.kl_divergence(p, q),
        ce.js_divergence(p, q),
        *ce.decompose(p, q),
        ce.entropy(ce.Logits(q)),
        ce.cross_entropy(ce.Labels(y), ce.Logits(q)),
        ce.cross_entropy(ce.Labels(y), q),
        ce.kl_divergence(ce.Labels(y), ce.Logits(q)),
    ]
    for r in results:
        assert str(r.dtype).endswith("float32"), r.dtype
    # Values exact in any of these dtypes: 1.5 bits and 0.25 bits (hand derivation).
    assert val(ce.entropy(p, base=2)) == pytest.approx([1.5], rel=1e-6)
    assert val(ce.kl_divergence(p, q, base=2)) == pytest.approx([0.25], rel=1e-6)


@pytest.mark.parametrize(
    ("backend", "measure"),
    [
        ("numpy", "cross_entropy"),
        ("numpy", "kl_divergence"),
        ("numpy", "js_divergence"),
        *[("torch", m) for m in ("cross_entropy", "kl_divergence", "js_divergence")],
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_labels_keep_the_dtype_of_q(backend, measure, dtype):
    # Labels carry no floating dtype: the result is q's (float32 for half q).
    q = arr(backend, [[0.5, 0.5], [0.25, 0.75]], dtype)
    y = ints(backend, [0, 1])
    result = getattr(ce, measure)(ce.Labels(y), q)
    assert str(result.dtype).endswith("float32"), result.dtype


def test_dtype_aware_sum_tolerance():
    # A float16 row can only sum to 1 within float16's rounding; the same numbers in
    # float32 are off by far more than float32's.
    p = np.array([0.5, 0.5 + 2e-3])
    ce.entropy(p.astype(np.float16))
    with pytest.raises(ValueError, match="does not sum to 1"):
        ce.entropy(p.astype(np.float32))
    # Within float32 rounding is accepted in float32 and in float64.
    p = np.array([0.5, 0.5 + 3e-7])
    ce.entropy(p.astype(np.float32))
    ce.entropy(p)
